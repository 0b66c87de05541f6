"""`klaviyo-stream`: run the service, the local Kafka, the Klaviyo sandbox, or publish calls;
check a setup (`doctor`), watch the group (`status`), inspect and replay dead letters (`dlq`).

A wrong setting prints one line naming it and exits 2; no traceback for a user's mistake.
A key Klaviyo refuses at run time is one line and exit 1.
"""

from __future__ import annotations

import asyncio
import sys

from stream.cli import commands, serve
from stream.cli.common import configure_logging, redacted
from stream.cli.parser import build_parser
from stream.core.clients import check_kafka_properties
from stream.core.errors import ConfigError, StreamError
from stream.core.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.registry and not args.local:
        parser.error("--registry needs --local (set SCHEMA_REGISTRY_URL to use your own)")
    if args.command == "doctor":
        return commands.doctor(args.config)
    try:
        settings = load_settings(args.config)
        used = configure_logging(settings.log_level, settings.log_format)
        settings = settings.model_copy(update={"log_format": used})  # `auto` resolved
        if args.command in ("run", "produce", "status", "dlq"):
            check_kafka_properties(settings)
        if args.command == "run":
            return serve.run(settings, args.local, args.sample, args.registry)
        if args.command == "sandbox":
            return commands.sandbox(args)
        if args.command == "kafka":
            from stream.local.kafka import run_foreground

            run_foreground(args.port)
            return 0
        if args.command == "registry":
            from stream.local import registry

            registry.run_foreground(args.port, announce=lambda line: print(line, flush=True))
            return 0
        if args.command == "produce":
            return commands.produce(settings, args)
        if args.command == "test-event":
            return commands.test_event(settings, args)
        if args.command == "status":
            return commands.status(settings, args.json)
        if args.command == "setup-metrics":
            return asyncio.run(commands.setup_metrics(settings, args.dry_run))
        if args.command == "dlq":
            return commands.dlq(settings, args)
    except ConfigError as exc:
        print(f"klaviyo-stream: configuration error: {redacted(exc)}", file=sys.stderr)
        return 2
    except StreamError as exc:
        print(f"klaviyo-stream: {type(exc).__name__}: {redacted(exc)}", file=sys.stderr)
        return 1
    return 0
