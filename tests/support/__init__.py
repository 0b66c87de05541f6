"""Helpers for tests that run the real service against the real broker and the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from confluent_kafka import Consumer
from pydantic import SecretStr

from stream.core.settings import SANDBOX_API_KEY, Settings
from stream.engine.service import Service
from stream.intake.decode import Decoder


def free_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool],
    timeout: float = 120.0,
    what: str = "condition",
    poll: float = 0.1,
) -> None:
    """Poll a condition (async or not) until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        met = condition()
        if met if isinstance(met, bool) else await met:
            return
        await asyncio.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def poll_until(
    condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition", poll: float = 0.1
) -> None:
    """Poll a condition until true; fail with `what` after `timeout` seconds (sync twin of
    `wait_until`, for tests outside an event loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def service_settings(bootstrap: str, topic: str, sandbox_url: str, **extra: Any) -> Settings:
    """Settings for a test run: real broker, sandbox, a fresh group and dead-letter topic."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topics": (topic,),
        "kafka_group_id": f"group-{topic}",
        "dlq_topic": f"{topic}-dlq",
        "klaviyo_base_url": sandbox_url,
        "klaviyo_api_key": SecretStr(SANDBOX_API_KEY),
        "batch_linger_ms": 50,
        "metrics_port": 0,
        "state_url": f"sqlite:///{tempfile.mkdtemp(prefix='state-')}/state.db",
        "deletion_settle_seconds": 0.3,  # the sandbox applies what it took at once, by default
    }
    values.update(extra)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, decoder: Decoder | None = None
) -> AsyncIterator[Service]:
    """The service running as a task; stopped (gracefully) and awaited on exit."""
    service = Service(settings, decoder=decoder)
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(task, timeout=60)


async def sandbox_get(base_url: str, path: str) -> Any:
    """GET one of the sandbox's inspection endpoints."""
    async with aiohttp.ClientSession() as session, session.get(base_url + path) as resp:
        resp.raise_for_status()
        return await resp.json()


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """Read `expected` records of a topic from the beginning (dead letters, for instance)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    records.append(msg)
    finally:
        consumer.close()
    return records
