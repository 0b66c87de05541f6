"""The whole service in-process: the real fetch loop, ledger, send stage and Klaviyo sandbox,
with Kafka replaced by in-memory topics (`tests.support.source`) behind the consumer seam.

What these prove needs only "records arrive, offsets are stored": exactly once with every
offset committed, a partition revoked mid-delivery and given back, a restart that goes on from
the committed offsets, and backpressure. The same promises are kept through the real broker
by `tests/promises/` (end to end, rebalance, crash, outages).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder
from tests.support import sandbox_get, service_settings, wait_until
from tests.support.inprocess import all_committed, publish_calls, serving
from tests.support.sandbox import faults, waiting_requests
from tests.support.source import Topics

TOPIC = "calls"
ENCODER = Encoder()


def settings_for(url: str, state: Path, **extra: Any) -> Any:
    return service_settings("127.0.0.1:1", TOPIC, url, state_url=f"sqlite:///{state}", **extra)


async def events_by_id(url: str) -> dict[str, int]:
    events = (await sandbox_get(url, "/sandbox/events"))["events"]
    return dict(Counter(e["unique_id"] for e in events))


def track(n: int, user: str) -> dict[str, Any]:
    return {
        "type": "track", "messageId": f"t-{n}-{uuid.uuid4()}", "event": "Viewed Product",
        "timestamp": f"2026-03-01T10:{n // 60:02d}:{n % 60:02d}Z", "userId": user,
        "properties": {"n": n}, "context": {"traits": {"email": f"{user}@example.com"}},
    }  # fmt: skip


async def test_mixed_calls_arrive_exactly_once_and_every_offset_is_committed(
    tmp_path: Path,
) -> None:
    topics = Topics({TOPIC: 3})
    calls = list(sample_calls(3_000, seed=5, persons=200))
    publish_calls(topics, TOPIC, calls)
    expected = {c["messageId"] for c in calls if c["type"] in ("track", "page")}
    persons = {c["userId"] for c in calls if c["type"] == "identify"}
    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = settings_for(sandbox.url, tmp_path / "state.db")
        async with serving(settings, topics) as run:
            await wait_until(lambda: all_committed(topics, TOPIC), timeout=120, what="commits")
        stored = await events_by_id(sandbox.url)
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
    assert run.service.result.consumed == len(calls)
    assert set(stored) == expected and max(stored.values()) == 1
    assert sorted(p["attributes"]["external_id"] for p in profiles) == sorted(persons)
    assert run.letters.letters == []


async def test_a_partition_revoked_mid_delivery_and_given_back_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Klaviyo holds the requests when partition 0 is revoked (its drain bound runs out) and
    assigned back: the copies read again must not finish in place of the originals. A stop
    that cancels the originals leaves them uncommitted, and the next run delivers them."""
    topics = Topics({TOPIC: 2})
    calls = {p: [track(p * 100 + n, user=f"u{p}") for n in range(5)] for p in (0, 1)}
    for partition, batch in calls.items():
        for call in batch:
            topics.produce(TOPIC, ENCODER.encode(call), b"u%d" % partition, partition=partition)
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        settings = settings_for(
            sandbox.url, tmp_path / "state.db",
            revoke_drain_seconds=0.5, shutdown_timeout_seconds=2,
        )  # fmt: skip
        await faults(sandbox.url, hold=True)
        async with serving(settings, topics) as run:

            async def in_flight() -> bool:
                return run.service.pending == 10 and await waiting_requests(sandbox.url) >= 1

            await wait_until(in_flight, timeout=30, what="every record's request held")
            run.source.revoke([(TOPIC, 0)])
            await wait_until(lambda: (TOPIC, 0) not in run.source.assigned, what="the revoke")
            run.source.assign([(TOPIC, 0)])
            await wait_until(lambda: run.service.result.consumed >= 15, what="read again")
        await faults(sandbox.url, hold=False)  # the held requests' client is gone: dropped
        assert (await sandbox_get(sandbox.url, "/sandbox/stats"))["events"] == 0
        assert not all_committed(topics, TOPIC)
        async with serving(settings, topics):
            await wait_until(lambda: all_committed(topics, TOPIC), timeout=60, what="all")
        stored = await events_by_id(sandbox.url)
    expected = {c["messageId"] for batch in calls.values() for c in batch}
    assert set(stored) == expected, f"lost: {sorted(expected - set(stored))[:3]}"
    assert max(stored.values()) == 1
    assert run.letters.letters == []


async def test_a_restart_goes_on_from_the_committed_offsets(tmp_path: Path) -> None:
    topics = Topics({TOPIC: 2})
    first = [track(n, user=f"u{n % 7}") for n in range(40)]
    later = [track(100 + n, user=f"u{n % 7}") for n in range(40)]
    publish_calls(topics, TOPIC, first)
    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = settings_for(sandbox.url, tmp_path / "state.db")
        async with serving(settings, topics):
            await wait_until(lambda: all_committed(topics, TOPIC), what="the first calls")
        publish_calls(topics, TOPIC, later)
        async with serving(settings, topics) as second:
            await wait_until(lambda: all_committed(topics, TOPIC), what="the later calls")
        stored = await events_by_id(sandbox.url)
    assert second.service.result.consumed == len(later)  # nothing read twice
    assert set(stored) == {c["messageId"] for c in first + later}
    assert max(stored.values()) == 1


async def test_a_slow_klaviyo_pauses_consumption_and_pending_records_stay_bounded(
    tmp_path: Path,
) -> None:
    records, most = 4_000, 250
    topics = Topics({TOPIC: 3})
    publish_calls(topics, TOPIC, sample_calls(records, persons=200))
    # Klaviyo's real limits at a 0.2 time scale: the bulk endpoints take 12.5 requests/s
    async with SandboxServer(SandboxConfig(time_scale=0.2)) as sandbox:
        settings = settings_for(
            sandbox.url, tmp_path / "state.db",
            max_pending_records=most, batch_max_events=50, klaviyo_rate_time_scale=0.2,
        )  # fmt: skip
        pending: list[int] = []
        paused: list[bool] = []
        async with serving(settings, topics) as run:

            async def sample() -> None:
                while True:
                    pending.append(run.service.pending)
                    paused.append(bool(run.sources) and run.source.paused)
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
    assert run.service.result.consumed < records, "a slow Klaviyo must hold the backlog back"
    assert max(pending) <= most
    assert stats["throttled"] <= 0.01 * stats["requests_total"]
