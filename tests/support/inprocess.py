"""The service in-process: its real parts over an in-memory Kafka side (`tests.support.source`)
and an in-memory dead-letter topic, with Klaviyo being the sandbox (or nothing, for tests that
never send)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from stream.completion.ledger import Ledger
from stream.core.calls import Record
from stream.core.settings import SANDBOX_API_KEY, Settings
from stream.engine.pipeline import build_client
from stream.engine.service import Running, Service
from stream.ops.produce import Encoder, key_of
from stream.state import StateStore, open_store
from tests.support.deadletters import DeadLetterSink
from tests.support.source import MemorySource, Topics, memory_source


def offline_settings(**extra: Any) -> Settings:
    """Settings for a service that never reaches Kafka or Klaviyo."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": "127.0.0.1:1",
        "klaviyo_api_key": SANDBOX_API_KEY,
        "state_url": "sqlite:///:memory:",
        "metrics_port": 0,
        "klaviyo_rate_governor": False,
    }
    return Settings(**{**values, **extra})


@contextlib.asynccontextmanager
async def assembled(
    settings: Settings, store: StateStore | None = None
) -> AsyncIterator[tuple[Running, DeadLetterSink]]:
    """One run's parts, wired as `Service.run` wires them but not started (no send-stage
    pumps, no heartbeat): the test drives `running.handler` itself."""
    letters = DeadLetterSink()
    service = Service(
        settings,
        store=store or open_store("sqlite:///:memory:"),
        source=memory_source(Topics({}), ()),
        dead_letters=letters,
    )
    async with build_client(settings) as client:
        yield service.assemble(client), letters


def begin(ledger: Ledger, values: Sequence[bytes | None], tp: tuple[str, int]) -> list[Record]:
    """Records of `values` at offsets 0.. of `tp`, begun in a new generation of it."""
    ledger.assign([tp])
    messages = [
        Message(topic=tp[0], partition=tp[1], offset=n, value=v) for n, v in enumerate(values)
    ]
    return ledger.begin(messages, ledger.stamp(messages))


@dataclass
class InProcess:
    """A service running as a task over in-memory topics, with its dead letters."""

    service: Service
    sources: list[MemorySource]  # one per run of the service (the last is the live one)
    letters: DeadLetterSink
    task: asyncio.Task[Any]

    @property
    def source(self) -> MemorySource:
        assert self.sources, "the service has not assembled its run yet"
        return self.sources[-1]


def publish_calls(topics: Topics, topic: str, calls: Iterable[dict[str, Any]]) -> int:
    """Encode calls as our producer does and append them, keyed by person; returns how many."""
    encoder = Encoder()
    count = 0
    for call in calls:
        topics.produce(topic, encoder.encode(call), key_of(call))
        count += 1
    return count


@contextlib.asynccontextmanager
async def serving(settings: Settings, topics: Topics) -> AsyncIterator[InProcess]:
    """`Service.run` as a task over `topics` (alone in its group: every partition of its
    topics is its own); stopped gracefully and awaited on exit."""
    factory = memory_source(topics, settings.kafka_topics)
    letters = DeadLetterSink()
    service = Service(settings, source=factory, dead_letters=letters)
    task = asyncio.create_task(service.run())
    running = InProcess(service, factory.made, letters, task)
    try:
        yield running
    finally:
        service.stop()
        await asyncio.wait_for(task, timeout=60)


def all_committed(topics: Topics, topic: str) -> bool:
    """Every partition of `topic` committed up to its end."""
    return all(
        topics.committed.get(tp, 0) == topics.high(tp) for tp in topics.partitions if tp[0] == topic
    )
