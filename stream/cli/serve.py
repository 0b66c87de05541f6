"""`klaviyo-stream run`: the service, alone or with the local broker, registry and sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from pydantic import SecretStr

from stream import __version__
from stream.cli.common import encoder, redacted, sandbox_parts
from stream.core.clients import (
    kafka_client_config,
    masked_settings,
    require_production_settings,
)
from stream.core.errors import ConfigError
from stream.core.settings import SANDBOX_API_KEY, Settings
from stream.core.values import revision_retirement, revision_warning

log = logging.getLogger("stream")


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

    SandboxConfig, SandboxThread = sandbox_parts()
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


def run(settings: Settings, local: bool, sample: int, registry: bool = False) -> int:
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
            f"klaviyo-stream: Klaviyo refused the API key ({redacted(exc)}): fix "
            "KLAVIYO_API_KEY; nothing past the refused records was committed",
            file=sys.stderr,
        )
        return 1


def _accounts_at_start(settings: Settings) -> None:
    """ACCOUNTS_FILE is checked before anything starts (structure and every key: one line,
    exit 2), so `run --local` reports a mistake before it starts a broker. The service
    reads it again and serves every account."""
    from stream.accounts.config import load_accounts

    load_accounts(settings)


async def _publish_demo(settings: Settings, count: int) -> None:
    """`--local --sample N`: the demo's traffic, its later part once the sandbox is ready."""
    from datetime import UTC, datetime, timedelta

    from stream.local.demo import demo_calls, publish_demo
    from stream.ops.produce import publish

    topic = settings.kafka_topics[0]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=count + 60)

    def send(calls: list[dict[str, Any]]) -> int:
        return publish(kafka_client_config(settings), topic, calls, encoder(settings, topic))

    await publish_demo(demo_calls(count, start=start), settings.klaviyo_base_url, send)


def _publish_sample(settings: Settings, count: int) -> int:
    from stream.local.sample import sample_calls
    from stream.ops.produce import publish

    topic = settings.kafka_topics[0]
    return publish(
        kafka_client_config(settings), topic, sample_calls(count), encoder(settings, topic)
    )
