"""Backpressure through the real broker: a slow Klaviyo pauses partitions, nothing piles up."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish
from tests.support import running_service, sandbox_get, service_settings, wait_until

RECORDS = 4_000
MAX_PENDING = 250


async def test_a_slow_klaviyo_pauses_consumption_and_pending_records_stay_bounded(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = topic_factory(partitions=3)
    publish(
        {"bootstrap.servers": kafka_bootstrap}, topic, sample_calls(RECORDS, persons=200), Encoder()
    )
    # Klaviyo's real limits at a 0.2 time scale: the bulk endpoints take 12.5 requests/s
    async with SandboxServer(SandboxConfig(time_scale=0.2)) as sandbox:
        settings = service_settings(
            kafka_bootstrap,
            topic,
            sandbox.url,
            max_pending_records=MAX_PENDING,
            batch_max_events=50,
            klaviyo_rate_time_scale=0.2,
        )
        pending: list[int] = []
        paused: list[bool] = []
        async with running_service(settings) as service:

            async def sample() -> None:
                while True:
                    running = service.running
                    pending.append(service.pending)
                    paused.append(running is not None and running.parts.source.paused)
                    await asyncio.sleep(0)  # after every step of the loop

            sampler = asyncio.create_task(sample())

            async def progressed_while_paused() -> bool:
                events = (await sandbox_get(sandbox.url, "/sandbox/stats"))["events"]
                return any(paused) and events >= 1_000

            try:
                await wait_until(progressed_while_paused, timeout=120, what="paused, then progress")
            finally:
                sampler.cancel()
        stats = await sandbox_get(sandbox.url, "/sandbox/stats")
    assert service.result.consumed < RECORDS, "a slow Klaviyo must hold the backlog in Kafka"
    assert max(pending) <= MAX_PENDING
    assert stats["throttled"] <= 0.01 * stats["requests_total"]
