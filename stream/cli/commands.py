"""The operator commands beside `run`: doctor, setup-metrics, test-event, status, produce, dlq,
sandbox."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from stream import __version__
from stream.cli.common import configure_logging, encoder, redacted, sandbox_parts
from stream.core.clients import (
    kafka_client_config,
    require_klaviyo_credentials,
)
from stream.core.errors import ConfigError
from stream.core.settings import Settings, load_settings


def doctor(config: str | None) -> int:
    """Every check, one line each; exit 0 when all pass, 1 otherwise (bad settings included)."""
    from stream.ops.doctor import FAIL, report, run_checks

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"{FAIL} settings: {redacted(exc)}")
        print("1 check failed: fix the setting, then run doctor again")
        return 1
    configure_logging("WARNING" if settings.log_level != "DEBUG" else "DEBUG", settings.log_format)
    print(
        f"✓ settings: klaviyo-stream {__version__}, {settings.klaviyo_mode} mode, "
        f"group {settings.kafka_group_id}",
        flush=True,
    )
    checks = []
    for check in run_checks(settings):
        checks.append(check)
        print(check.line(), flush=True)
    _text, code = report(checks)
    print(_text.rsplit("\n", 1)[-1])
    return code


async def setup_metrics(settings: Settings, dry_run: bool) -> int:
    """`setup-metrics`: the seven mapped metrics pointed at ours (`stream.ops.revenue`)."""
    from stream.engine.pipeline import build_client
    from stream.ops.revenue import client_request, setup

    require_klaviyo_credentials(settings)
    if settings.klaviyo_mode == "client":
        raise ConfigError("KLAVIYO_MODE: setup-metrics needs the private key (server mode)")
    async with build_client(settings) as client:
        return await setup(client_request(client), dry_run, lambda line: print(line, flush=True))


def test_event(settings: Settings, args: argparse.Namespace) -> int:
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


def status(settings: Settings, as_json: bool) -> int:
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


def produce(settings: Settings, args: argparse.Namespace) -> int:
    from stream.local.sample import sample_calls
    from stream.ops.produce import publish

    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set")
    topic = args.topic or settings.kafka_topics[0]
    if args.input:
        return _produce_file(settings, args, topic)
    config = kafka_client_config(settings)
    count = publish(
        config, topic, sample_calls(args.sample), encoder(settings, topic), backfill=args.backfill
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
        encoder(settings, topic),
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


def dlq(settings: Settings, args: argparse.Namespace) -> int:
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
        encode=lambda call: encoder(settings, args.to_topic or settings.kafka_topics[0]).encode(
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


def sandbox(args: argparse.Namespace) -> int:
    SandboxConfig, _thread = sandbox_parts()
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
