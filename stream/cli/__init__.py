"""`klaviyo-stream`: run the service, the local Kafka, the Klaviyo sandbox, or publish calls;
check a setup (`doctor`), watch the group (`status`), inspect and replay dead letters (`dlq`).

A wrong setting prints one line naming it and exits 2; no traceback for a user's mistake.
A key Klaviyo refuses at run time is one line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from pydantic import SecretStr

from stream import __version__
from stream.core.clients import (
    check_kafka_properties,
    kafka_client_config,
    masked_settings,
    require_klaviyo_credentials,
    require_production_settings,
)
from stream.core.errors import ConfigError, StreamError
from stream.core.settings import SANDBOX_API_KEY, Settings, load_settings
from stream.core.values import revision_retirement, revision_warning

log = logging.getLogger("stream")

CONFIG_HELP = "settings file (YAML or JSON); env vars win over it"


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


def _parser() -> argparse.ArgumentParser:
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
        chosen.add_argument(
            "--reason", help="substring of the stage, error class/message or code"
        )
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.registry and not args.local:
        parser.error("--registry needs --local (set SCHEMA_REGISTRY_URL to use your own)")
    if args.command == "doctor":
        return _doctor(args.config)
    try:
        settings = load_settings(args.config)
        used = _configure_logging(settings.log_level, settings.log_format)
        settings = settings.model_copy(update={"log_format": used})  # `auto` resolved
        if args.command in ("run", "produce", "status", "dlq"):
            check_kafka_properties(settings)
        if args.command == "run":
            return _run(settings, args.local, args.sample, args.registry)
        if args.command == "sandbox":
            return _sandbox(args)
        if args.command == "kafka":
            from stream.local.kafka import run_foreground

            run_foreground(args.port)
            return 0
        if args.command == "registry":
            from stream.local import registry

            registry.run_foreground(args.port, announce=lambda line: print(line, flush=True))
            return 0
        if args.command == "produce":
            return _produce(settings, args)
        if args.command == "test-event":
            return _test_event(settings, args)
        if args.command == "status":
            return _status(settings, args.json)
        if args.command == "setup-metrics":
            return asyncio.run(_setup_metrics(settings, args.dry_run))
        if args.command == "dlq":
            return _dlq(settings, args)
    except ConfigError as exc:
        print(f"klaviyo-stream: configuration error: {_redacted(exc)}", file=sys.stderr)
        return 2
    except StreamError as exc:
        print(f"klaviyo-stream: {type(exc).__name__}: {_redacted(exc)}", file=sys.stderr)
        return 1
    return 0


def _redacted(exc: BaseException) -> str:
    from stream.telemetry.logs import redact

    return redact(str(exc))


def _configure_logging(level: str, fmt: str = "json") -> str:
    from stream.telemetry.logs import configure_logging

    return configure_logging(level, fmt=fmt)


def _doctor(config: str | None) -> int:
    """Every check, one line each; exit 0 when all pass, 1 otherwise (bad settings included)."""
    from stream.ops.doctor import FAIL, report, run_checks

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"{FAIL} settings: {_redacted(exc)}")
        print("1 check failed: fix the setting, then run doctor again")
        return 1
    _configure_logging("WARNING" if settings.log_level != "DEBUG" else "DEBUG",
                       settings.log_format)
    print(f"✓ settings: klaviyo-stream {__version__}, {settings.klaviyo_mode} mode, "
          f"group {settings.kafka_group_id}", flush=True)
    checks = []
    for check in run_checks(settings):
        checks.append(check)
        print(check.line(), flush=True)
    _text, code = report(checks)
    print(_text.rsplit("\n", 1)[-1])
    return code


async def _setup_metrics(settings: Settings, dry_run: bool) -> int:
    """`setup-metrics`: the seven mapped metrics pointed at ours (`stream.ops.revenue`)."""
    from stream.engine.pipeline import build_client
    from stream.ops.revenue import client_request, setup

    require_klaviyo_credentials(settings)
    if settings.klaviyo_mode == "client":
        raise ConfigError("KLAVIYO_MODE: setup-metrics needs the private key (server mode)")
    async with build_client(settings) as client:
        return await setup(client_request(client), dry_run, lambda line: print(line, flush=True))


def _test_event(settings: Settings, args: argparse.Namespace) -> int:
    """`test-event`: with an accounts file, routed first (which account, why), then tested
    with that account's settings (`stream.ops.tester_accounts`)."""
    from stream.ops.tester import read_call, run_tester
    from stream.ops.tester_accounts import account_for_test

    chosen = account_for_test(
        settings,
        read_call(args.file),
        topic=args.topic,
        headers=args.header,
        account=args.account,
        dry_run=args.dry_run,
    )
    if chosen is None:
        return 0
    return asyncio.run(run_tester(chosen, args.file, dry_run=args.dry_run))


def _status(settings: Settings, as_json: bool) -> int:
    import json

    from stream.ops.status import format_status, group_status

    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set")
    status = group_status(
        kafka_client_config(settings),
        settings.kafka_group_id,
        (*settings.kafka_topics, *settings.catalog_topics),
        settings.dlq_topic,
    )
    print(json.dumps(status.to_json(), indent=2) if as_json else format_status(status))
    return 0


def _startup_line(settings: Settings) -> None:
    """One line: version, topics, group, state and the effective settings (secrets masked).
    On a terminal (console format) the settings, one long line, are logged apart at DEBUG."""
    from urllib.parse import urlsplit

    fields: dict[str, Any] = {
        "version": __version__,
        "topics": list(settings.kafka_topics),
        "catalog_topics": list(settings.catalog_topics),
        "group": settings.kafka_group_id,
        "state_backend": urlsplit(str(settings.state_url)).scheme,
    }
    if settings.log_format == "console":
        log.info("starting", extra=fields)
        log.debug("settings", extra={"settings": masked_settings(settings)})
    else:
        log.info("starting", extra={**fields, "settings": masked_settings(settings)})


def _revision_check(settings: Settings) -> None:
    """The retirement date as a metric (alerted on), and a warning line within 90 days."""
    from datetime import UTC, datetime, time

    from stream.telemetry import metrics

    retires = datetime.combine(revision_retirement(settings.klaviyo_revision), time(), UTC)
    metrics.REVISION_RETIREMENT.labels(settings.klaviyo_revision).set(retires.timestamp())
    warning = revision_warning(settings.klaviyo_revision)
    if warning:
        log.warning(warning, extra={"retires": retires.date().isoformat()})


async def _report_sandbox(url: str, every: float = 2.0) -> None:
    """`--local`: print what the sandbox holds when it changes: a newcomer sees data arrive."""
    import aiohttp

    last: tuple[int, int] = (-1, -1)
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{url}/sandbox/stats") as resp:
                stats = await resp.json()
            now = (stats["profiles"], stats["events"])
            if now != last:
                print(
                    f"sandbox: {now[0]} profiles, {now[1]} events "
                    f"(see {url}/sandbox/ in a browser)",
                    flush=True,
                )
                last = now
            await asyncio.sleep(every)


@contextlib.contextmanager
def _local_stack(settings: Settings, registry: bool = False) -> Iterator[Settings]:
    """`--local`: a local broker and sandbox (and registry), and settings that point at them."""
    from stream.local.kafka import LocalKafka

    SandboxConfig, SandboxThread = _sandbox_parts()
    from stream.local.demo import LISTS

    with (
        LocalKafka() as kafka,
        SandboxThread(SandboxConfig(lists=LISTS)) as sandbox,
        tempfile.TemporaryDirectory(prefix="klaviyo-stream-") as state,
        contextlib.ExitStack() as more,
    ):
        print(
            f"local Kafka at {kafka.bootstrap_servers}; Klaviyo sandbox at {sandbox.url}",
            flush=True,
        )
        print(f"sandbox pages (open in a browser): {sandbox.url}/sandbox/", flush=True)
        update: dict[str, object] = {
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "klaviyo_base_url": sandbox.url,
            "klaviyo_api_key": SecretStr(SANDBOX_API_KEY),
        }
        if registry:
            update.update(_local_registry(more))
        if "state_url" not in settings.model_fields_set:
            # a fresh broker and sandbox get fresh state: yesterday's dedup window would drop
            # today's (deterministic) sample calls
            update["state_url"] = f"sqlite:///{state}/state.db"
        yield settings.model_copy(update=update)


def _local_registry(stack: contextlib.ExitStack) -> dict[str, object]:
    """`run --local --registry`: a local Apicurio registry (no auth) and the settings for it."""
    from stream.local.registry import VERSION, LocalRegistry, ensure_bundle

    ensure_bundle(lambda line: print(line, flush=True))
    registry = stack.enter_context(LocalRegistry())
    print(f"local Schema Registry (Apicurio {VERSION}) at {registry.url}", flush=True)
    return {
        "schema_registry_url": registry.url,
        "schema_registry_basic_auth_user_info": None,
        "schema_registry_bearer_token": None,
    }


def _run(settings: Settings, local: bool, sample: int, registry: bool = False) -> int:
    from stream.core.errors import FatalDeliveryError
    from stream.engine.service import Service, install_signal_handlers
    from stream.intake.decode import make_decoder
    from stream.telemetry.health import Health

    async def serve(effective: Settings) -> None:
        from stream.telemetry.observe import start_observer

        health = Health(stall_after_seconds=effective.ready_stall_seconds)
        try:
            observer = await start_observer(effective.metrics_port, health)
        except OSError as exc:
            raise ConfigError(
                f"METRICS_PORT: cannot listen on port {effective.metrics_port} "
                f"({exc.strerror or exc}): another process uses it; choose a free port, "
                "or 0 for any"
            ) from None
        try:
            _startup_line(effective)
            _revision_check(effective)
            service = Service(effective, health=health, decoder=make_decoder(effective))
            install_signal_handlers(service)
            log.info("metrics", extra={"port": observer.port})
            helpers = []
            if sample and local:
                helpers.append(asyncio.create_task(_publish_demo(effective, sample)))
            elif sample:
                loop = asyncio.get_running_loop()
                count = await loop.run_in_executor(None, _publish_sample, effective, sample)
                print(f"published {count} sample calls to {effective.kafka_topics[0]}", flush=True)
            if local:
                helpers.append(asyncio.create_task(_report_sandbox(effective.klaviyo_base_url)))
            try:
                result = await service.run()
            finally:
                for helper in helpers:
                    helper.cancel()
        finally:
            await observer.close()
        # a log record like every other line: stdout and stderr are one stream in a container
        log.info(
            "stopped",
            extra={"consumed": result.consumed, "dead_lettered": result.dead_lettered},
        )

    _accounts_at_start(settings)
    try:
        if not local:
            require_production_settings(settings)
            asyncio.run(serve(settings))
            return 0
        with _local_stack(settings, registry) as effective:
            asyncio.run(serve(effective))
        return 0
    except FatalDeliveryError as exc:
        print(
            f"klaviyo-stream: Klaviyo refused the API key ({_redacted(exc)}): fix "
            "KLAVIYO_API_KEY; nothing past the refused records was committed",
            file=sys.stderr,
        )
        return 1


def _accounts_at_start(settings: Settings) -> None:
    """ACCOUNTS_FILE is checked at start (structure and every key: one line, exit 2). The
    engine does not serve several accounts yet (issue 22, phase 2): until it does, a file is
    refused rather than ignored, so no account's records go to another's Klaviyo."""
    from stream.accounts.config import load_accounts

    accounts = load_accounts(settings)
    if not accounts.implicit:
        raise ConfigError(
            f"ACCOUNTS_FILE: {settings.accounts_file} is valid ({len(accounts)} accounts), but "
            "`run` serves one account until the engine is wired for several (issue 22, phase "
            "2); unset ACCOUNTS_FILE. doctor, test-event and dlq already read it"
        )


async def _publish_demo(settings: Settings, count: int) -> None:
    """`--local --sample N`: the demo's traffic, its later part once the sandbox is ready."""
    from datetime import UTC, datetime, timedelta

    from stream.local.demo import demo_calls, publish_demo
    from stream.ops.produce import publish

    topic = settings.kafka_topics[0]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=count + 60)

    def send(calls: list[dict[str, Any]]) -> int:
        return publish(kafka_client_config(settings), topic, calls, _encoder(settings, topic))

    await publish_demo(demo_calls(count, start=start), settings.klaviyo_base_url, send)


def _publish_sample(settings: Settings, count: int) -> int:
    from stream.local.sample import sample_calls
    from stream.ops.produce import publish

    topic = settings.kafka_topics[0]
    return publish(
        kafka_client_config(settings), topic, sample_calls(count), _encoder(settings, topic)
    )


def _encoder(settings: Settings, topic: str) -> Any:
    from stream.intake.registry import auth_setting, registry_client
    from stream.ops.produce import Encoder

    client = registry_client(settings)
    return Encoder(registry=client, topic=topic, setting=auth_setting(settings))


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    from stream.local.sample import sample_calls
    from stream.ops.produce import publish

    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set")
    topic = args.topic or settings.kafka_topics[0]
    if args.input:
        return _produce_file(settings, args, topic)
    config = kafka_client_config(settings)
    count = publish(
        config, topic, sample_calls(args.sample), _encoder(settings, topic), backfill=args.backfill
    )
    print(f"published {count} calls to {topic}")
    return 0


def _produce_file(settings: Settings, args: argparse.Namespace, topic: str) -> int:
    """`produce --input`: bad lines named by number on stderr; exit 1 if any was refused."""
    from stream.ops.produce import publish_file

    def refused(number: int, reason: str) -> None:
        print(f"{args.input}:{number}: {reason}", file=sys.stderr, flush=True)

    report = publish_file(
        kafka_client_config(settings),
        topic,
        args.input,
        _encoder(settings, topic),
        strict=args.strict,
        on_refused=refused,
        progress=not args.no_progress and sys.stderr.isatty(),
        backfill=args.backfill,
    )
    calls = report.published - report.catalog
    print(f"published {calls} calls to {topic}")
    if report.catalog:
        print(f"published {report.catalog} catalog records to {topic} (keyed <kind>:<id>)")
    if report.filled:
        filled = " and ".join(f"{name} in {n}" for name, n in sorted(report.filled.items()))
        print(f"filled {filled} call(s) as the analytics libraries do (uuid4; now, UTC)")
    if report.stopped_at is not None:
        print(f"stopped at line {report.stopped_at} (--strict); the lines before it were sent")
    elif report.refused:
        print(f"{len(report.refused)} line(s) refused (listed above); the others were sent")
    return 1 if report.refused else 0


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from stream.ops.replay import ReplayFilter

    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set")
    if args.dlq_command == "show":
        return _dlq_show(settings, *args.position)
    selection = ReplayFilter(
        reason=args.reason, since=args.since, until=args.until, account=args.account
    )
    if args.dlq_command == "list":
        return _dlq_list(settings, selection, args.json)
    return _dlq_replay(settings, args, selection)


def _dlq_list(settings: Settings, selection: Any, as_json: bool) -> int:
    import json

    from stream.ops.dlq import format_list, groups_json, list_dead_letters

    read, groups = list_dead_letters(kafka_client_config(settings), settings.dlq_topic, selection)
    if as_json:
        print(json.dumps(groups_json(settings.dlq_topic, read, groups), indent=2))
    else:
        print(format_list(settings.dlq_topic, read, groups))
    return 0


def _dlq_show(settings: Settings, partition: int, offset: int) -> int:
    from stream.intake.decode import make_decoder
    from stream.ops.dlq import format_show, show_dead_letter
    from stream.rules.transform import transformer_from_settings

    hipaa = transformer_from_settings(settings) if settings.hipaa_mode else None
    shown = show_dead_letter(
        kafka_client_config(settings),
        settings.dlq_topic,
        partition,
        offset,
        make_decoder(settings).decode,
        hipaa,
    )
    print(format_show(shown))
    return 0


def _dlq_replay(settings: Settings, args: argparse.Namespace, selection: Any) -> int:
    from stream.ops.replay import replay

    result = replay(
        kafka_client_config(settings),
        settings.dlq_topic,
        selection,
        to_topic=args.to_topic,
        dry_run=args.dry_run,
        progress=not args.no_progress,
        encode=lambda call: _encoder(settings, args.to_topic or settings.kafka_topics[0]).encode(
            call
        ),
    )
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {result.replayed} of {result.read} dead letters ({result.skipped} not chosen)")
    if result.without_value:
        print(
            f"{result.without_value} chosen dead letters have no value (too large for the "
            "dead-letter topic): their dlq.original.* headers say where the records are"
        )
    return 0


def _sandbox_parts() -> tuple[Any, Any]:
    """The sandbox's classes; without the `local` extra, one line saying how to get it."""
    try:
        from stream.local.sandbox import SandboxConfig, SandboxThread
    except ImportError as exc:
        raise ConfigError(
            f"the Klaviyo sandbox needs the `local` extra ({exc.name} is missing): "
            "pip install 'klaviyo-stream[local]'"
        ) from None
    return SandboxConfig, SandboxThread


def _sandbox(args: argparse.Namespace) -> int:
    SandboxConfig, _thread = _sandbox_parts()
    from stream.local.sandbox import run

    try:
        config = SandboxConfig(
            host=args.host,
            port=args.port,
            rate_limits=not args.no_rate_limits,
            time_scale=args.time_scale,
            job_delay_seconds=args.job_delay,
        )
    except ValueError as exc:  # a flag out of range: one line, not a traceback
        raise ConfigError(str(exc)) from None
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
