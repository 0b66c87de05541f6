"""The command line: every command, its options and their checks."""

from __future__ import annotations

import argparse
from typing import Any

from stream import __version__
from stream.cli.common import CONFIG_HELP
from stream.core.errors import ConfigError


def _time(text: str) -> float:
    """argparse type of --since/--until: a bad value is a usage error (exit 2 with usage)."""
    from stream.ops.replay import parse_time

    try:
        return parse_time(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _header(text: str) -> tuple[str, str]:
    from stream.ops.tester_accounts import parse_header

    try:
        return parse_header(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _position(text: str) -> tuple[int, int]:
    from stream.ops.dlq import parse_position

    try:
        return parse_position(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand: every subparser knows it too, with
    # no default of its own, so a value given after the subcommand wins and none is not lost
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    parser = argparse.ArgumentParser(prog="klaviyo-stream", description=__doc__)
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"klaviyo-stream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    run = add("run", help="consume calls from Kafka and deliver them to Klaviyo")
    run.add_argument(
        "--local",
        action="store_true",
        help="start a local Kafka broker and a local Klaviyo sandbox (demo/dev)",
    )
    run.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="N",
        help="publish about N sample calls after start; with --local the demo's: orders, "
        "consent, lists, a merge and a deletion",
    )
    run.add_argument(
        "--registry",
        action="store_true",
        help="with --local: a local Schema Registry too; calls go through it (Confluent format)",
    )

    sandbox = add("sandbox", help="serve the Klaviyo sandbox API")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    sandbox.add_argument("--no-rate-limits", action="store_true")
    sandbox.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="rate-limit windows × this factor (0.1 = 10× faster)",
    )
    sandbox.add_argument(
        "--job-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="apply event and profile jobs this long after the 202, as Klaviyo does "
        "(default 0: before the answer)",
    )

    tester = add(
        "test-event", help="run one JSON call through routing/transform/mapping and send it"
    )
    tester.add_argument("file", help="one Segment-format call as a JSON object")
    tester.add_argument("--dry-run", action="store_true", help="show the request, do not send")
    tester.add_argument(
        "--account", help="with ACCOUNTS_FILE: test with this account (default: routing's)"
    )
    tester.add_argument("--topic", help="route as if read from this topic (KAFKA_TOPICS' first)")
    tester.add_argument(
        "--header", type=_header, action="append", default=[], metavar="NAME=VALUE",
        help="route as if the record had this header (klaviyo-account=NAME); repeatable",
    )  # fmt: skip

    kafka = add("kafka", help="run a local single-node Kafka broker (KRaft)")
    kafka.add_argument("--port", type=int, default=9092)

    registry = add(
        "registry", help="run a local Schema Registry (Apicurio, Confluent's API; in memory)"
    )
    registry.add_argument("--port", type=int, default=8081)

    produce = add("produce", help="publish Segment JSON calls as Avro records")
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON-lines file of calls (and catalog records)")
    source.add_argument("--sample", type=int, metavar="N", help="generate N realistic calls")
    produce.add_argument("--topic", help="topic (default: the first of KAFKA_TOPICS)")
    produce.add_argument(
        "--strict", action="store_true", help="--input: stop at the first bad line (else skip it)"
    )
    produce.add_argument("--no-progress", action="store_true", help="no progress bar")
    produce.add_argument(
        "--backfill",
        action="store_true",
        help="a historical load: events recorded without flows, consent as a historical import",
    )

    add("doctor", help="check the settings and every dependency for real; exit 1 on a failure")

    metrics = add(
        "setup-metrics", help="point Klaviyo's mapped metrics (revenue, …) at the metrics we send"
    )
    metrics.add_argument("--dry-run", action="store_true", help="say what would change")

    status = add("status", help="the consumer group as Kafka sees it: members, offsets, lag")
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")

    dlq = add("dlq", help="work with the dead-letter topic (DLQ_TOPIC)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)

    def chooser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        chosen = dlq_sub.add_parser(name, parents=[common], **kwargs)
        chosen.add_argument("--reason", help="substring of the stage, error class/message or code")
        chosen.add_argument(
            "--since", type=_time, help="last attempt at or after (ISO-8601 or Unix seconds)"
        )
        chosen.add_argument(
            "--until", type=_time, help="last attempt at or before (ISO-8601 or Unix seconds)"
        )
        chosen.add_argument("--account", help="dead letters of this account (dlq.account)")
        return chosen

    listing = chooser("list", help="count dead letters by stage and reason, newest first")
    listing.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    show = dlq_sub.add_parser(
        "show", parents=[common], help="one dead letter's headers and decoded call"
    )
    show.add_argument("position", type=_position, metavar="PARTITION:OFFSET")
    replay = chooser(
        "replay", help="re-send chosen dead letters to their original topic (as backfill)"
    )
    replay.add_argument("--to-topic", help="publish here instead of each original topic")
    replay.add_argument("--dry-run", action="store_true", help="count, do not publish")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser
