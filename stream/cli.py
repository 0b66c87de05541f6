"""`klaviyo-stream`: run the service, the local Kafka, the Klaviyo sandbox, or publish calls.

A wrong setting prints one line naming it and exits 2; no traceback for a user's mistake.
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

from stream.errors import ConfigError, StreamError
from stream.settings import (
    SANDBOX_API_KEY,
    Settings,
    kafka_client_config,
    load_settings,
    require_production_settings,
)

log = logging.getLogger("stream")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klaviyo-stream", description=__doc__)
    parser.add_argument("--config", help="settings file (YAML or JSON); env vars win over it")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume calls from Kafka and deliver them to Klaviyo")
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
        help="with --local: publish N sample calls after start",
    )

    sandbox = sub.add_parser("sandbox", help="serve the Klaviyo sandbox API")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    sandbox.add_argument("--no-rate-limits", action="store_true")
    sandbox.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="rate-limit windows × this factor (0.1 = 10× faster)",
    )

    tester = sub.add_parser(
        "test-event", help="run one JSON call through routing/transform/mapping and send it"
    )
    tester.add_argument("file", help="one Segment-format call as a JSON object")
    tester.add_argument("--dry-run", action="store_true", help="show the request, do not send")

    kafka = sub.add_parser("kafka", help="run a local single-node Kafka broker (KRaft)")
    kafka.add_argument("--port", type=int, default=9092)

    produce = sub.add_parser("produce", help="publish Segment JSON calls as Avro records")
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON-lines file of calls")
    source.add_argument("--sample", type=int, metavar="N", help="generate N realistic calls")
    produce.add_argument("--topic", help="topic (default: the first of KAFKA_TOPICS)")
    produce.add_argument(
        "--strict", action="store_true", help="--input: stop at the first bad line (else skip it)"
    )
    produce.add_argument("--no-progress", action="store_true", help="no progress bar")

    dlq = sub.add_parser("dlq", help="work with the dead-letter topic (DLQ_TOPIC)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    replay = dlq_sub.add_parser(
        "replay", help="re-send chosen dead letters to their original topic (as backfill)"
    )
    replay.add_argument("--reason", help="substring of the stage, error class/message or code")
    replay.add_argument("--since", help="last attempt at or after (ISO-8601 or Unix seconds)")
    replay.add_argument("--until", help="last attempt at or before (ISO-8601 or Unix seconds)")
    replay.add_argument("--to-topic", help="publish here instead of each original topic")
    replay.add_argument("--dry-run", action="store_true", help="count, do not publish")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        _configure_logging(settings.log_level)
        if args.command == "run":
            return _run(settings, args.local, args.sample)
        if args.command == "sandbox":
            return _sandbox(args)
        if args.command == "kafka":
            from stream.localkafka import run_foreground

            run_foreground(args.port)
            return 0
        if args.command == "produce":
            return _produce(settings, args)
        if args.command == "test-event":
            from stream.tester import run_tester

            return asyncio.run(run_tester(settings, args.file, dry_run=args.dry_run))
        if args.command == "dlq":
            return _dlq_replay(settings, args)
    except ConfigError as exc:
        print(f"klaviyo-stream: configuration error: {exc}", file=sys.stderr)
        return 2
    except StreamError as exc:
        print(f"klaviyo-stream: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _configure_logging(level: str) -> None:
    try:
        from stream.logs import configure_logging
    except ImportError:  # pragma: no cover - logs module is optional during bootstrap
        logging.basicConfig(level=level)
        return
    configure_logging(level)


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
def _local_stack(settings: Settings) -> Iterator[Settings]:
    """`--local`: a local broker and sandbox, and settings that point at them."""
    from stream.localkafka import LocalKafka
    from stream.sandbox import SandboxConfig, SandboxThread

    with (
        LocalKafka() as kafka,
        SandboxThread(SandboxConfig()) as sandbox,
        tempfile.TemporaryDirectory(prefix="klaviyo-stream-") as state,
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
        if "state_url" not in settings.model_fields_set:
            # a fresh broker and sandbox get fresh state: yesterday's dedup window would drop
            # today's (deterministic) sample calls
            update["state_url"] = f"sqlite:///{state}/state.db"
        yield settings.model_copy(update=update)


def _run(settings: Settings, local: bool, sample: int) -> int:
    from stream.service import Service, install_signal_handlers

    async def serve(effective: Settings) -> None:
        from stream.observe import start_observer

        service = Service(effective)
        install_signal_handlers(service)
        observer = await start_observer(effective.metrics_port, service.health)
        log.info("metrics", extra={"port": observer.port})
        if sample:
            loop = asyncio.get_running_loop()
            count = await loop.run_in_executor(None, _publish_sample, effective, sample)
            print(f"published {count} sample calls to {effective.kafka_topics[0]}", flush=True)
        reporter = (
            asyncio.create_task(_report_sandbox(effective.klaviyo_base_url)) if local else None
        )
        try:
            result = await service.run()
        finally:
            if reporter is not None:
                reporter.cancel()
            await observer.close()
        print(
            f"stopped: {result.consumed} records consumed, {result.dead_lettered} dead-lettered",
            flush=True,
        )

    if not local:
        require_production_settings(settings)
        asyncio.run(serve(settings))
        return 0
    with _local_stack(settings) as effective:
        asyncio.run(serve(effective))
    return 0


def _publish_sample(settings: Settings, count: int) -> int:
    from stream.produce import publish
    from stream.sample import sample_calls

    topic = settings.kafka_topics[0]
    return publish(
        kafka_client_config(settings), topic, sample_calls(count), _encoder(settings, topic)
    )


def _encoder(settings: Settings, topic: str) -> Any:
    from stream.produce import Encoder

    if not settings.schema_registry_url:
        return Encoder(topic=topic)
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return Encoder(
        registry=SchemaRegistryClient({"url": settings.schema_registry_url}), topic=topic
    )


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    from stream.produce import publish
    from stream.sample import sample_calls

    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set")
    topic = args.topic or settings.kafka_topics[0]
    if args.input:
        return _produce_file(settings, args, topic)
    config = kafka_client_config(settings)
    count = publish(config, topic, sample_calls(args.sample), _encoder(settings, topic))
    print(f"published {count} calls to {topic}")
    return 0


def _produce_file(settings: Settings, args: argparse.Namespace, topic: str) -> int:
    """`produce --input`: bad lines named by number on stderr; exit 1 if any was refused."""
    from stream.produce import publish_file

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
    )
    print(f"published {report.published} calls to {topic}")
    if report.filled:
        filled = " and ".join(f"{name} in {n}" for name, n in sorted(report.filled.items()))
        print(f"filled {filled} call(s) as the analytics libraries do (uuid4; now, UTC)")
    if report.stopped_at is not None:
        print(f"stopped at line {report.stopped_at} (--strict); the lines before it were sent")
    elif report.refused:
        print(f"{len(report.refused)} line(s) refused (listed above); the others were sent")
    return 1 if report.refused else 0


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from stream.replay import ReplayFilter, parse_time, replay

    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set")
    selection = ReplayFilter(
        reason=args.reason,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
    )
    result = replay(
        kafka_client_config(settings),
        settings.dlq_topic,
        selection,
        to_topic=args.to_topic,
        dry_run=args.dry_run,
        progress=not args.no_progress,
    )
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {result.replayed} of {result.read} dead letters ({result.skipped} not chosen)")
    if result.without_value:
        print(
            f"{result.without_value} chosen dead letters have no value (too large for the "
            "dead-letter topic): their dlq.original.* headers say where the records are"
        )
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from stream.sandbox import SandboxConfig, run

    run(
        SandboxConfig(
            host=args.host,
            port=args.port,
            rate_limits=not args.no_rate_limits,
            time_scale=args.time_scale,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
