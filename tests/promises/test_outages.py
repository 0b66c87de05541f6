"""Outages: the broker stopped and restarted mid-run; Klaviyo failing 20 % of requests.

The broker restart comes while the first half of the records is being delivered; the second
half is published only once the broker is back, so the service must carry on reading.
Both runs must end with every event stored exactly once at the sandbox, one profile per
person, and nothing in the dead-letter topic: outages are retried, never dead-lettered
(within the retry budget), and what is retried after a lost answer is refused by unique_id.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream.local.kafka import LocalKafka
from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import wait_until
from tests.support.harness import (
    ServiceProcess,
    assert_exactly_once,
    committed_lag,
    expected_of,
    service_env,
    state_dir,
    stats,
    topic_size,
    with_duplicates,
)
from tests.support.kafka import make_topic_factory

RECORDS = 20_000
PERSONS = 1_000


async def _run_to_the_end(
    service: ServiceProcess, sandbox_url: str, bootstrap: str, topic: str, events: int
) -> None:
    async def finished() -> bool:
        assert service.alive, service.log()[-3000:]
        if int((await stats(sandbox_url))["events"]) < events:
            return False
        return committed_lag(bootstrap, f"group-{topic}", topic) == 0

    await wait_until(finished, timeout=600, what="every record delivered and committed")
    assert service.terminate() == 0, service.log()[-3000:]


async def _events_reach(service: ServiceProcess, sandbox_url: str, count: int) -> None:
    async def reached() -> bool:
        assert service.alive, service.log()[-3000:]
        return int((await stats(sandbox_url))["events"]) >= count

    await wait_until(reached, timeout=300, what=f"{count} events")


@pytest.mark.slow
async def test_broker_restart_mid_run_loses_and_duplicates_nothing(
    private_kafka: LocalKafka, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On a broker of its own: the session's, shared with the tests beside it, stays up."""
    kafka_broker, kafka_bootstrap = private_kafka, private_kafka.bootstrap_servers
    topic = make_topic_factory(kafka_bootstrap, request)(partitions=3)
    calls = with_duplicates(list(sample_calls(RECORDS, seed=21, persons=PERSONS)))
    half = len(calls) // 2
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls[:half], Encoder())
    events, _profiles = expected_of(calls)
    started = time.monotonic()
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        # a small pending bound keeps the service fetching (and committing) all along
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), max_pending_records=1000
        )
        service = ServiceProcess(env, tmp_path / "svc.log")
        try:
            service.start()
            await _events_reach(service, sandbox.url, len(events) // 5)
            at_restart = int((await stats(sandbox.url))["events"])
            await asyncio.to_thread(kafka_broker.restart)
            # the second half exists only after the restart: the service must read on
            publish({"bootstrap.servers": kafka_bootstrap}, topic, calls[half:], Encoder())
            await _run_to_the_end(service, sandbox.url, kafka_bootstrap, topic, len(events))
        finally:
            service.stop_quietly()
        await assert_exactly_once(sandbox.url, calls)
        final = await stats(sandbox.url)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    first_half_events = len(expected_of(calls[:half])[0])
    assert at_restart < first_half_events, "the first half was done before the restart: no test"
    print(
        f"{RECORDS} records, broker restarted at {at_restart} events, "
        f"{final['refused_duplicates']} replays refused, {time.monotonic() - started:.0f} s"
    )


@pytest.mark.slow
async def test_klaviyo_failing_a_fifth_of_requests_then_recovering(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=3)
    calls = with_duplicates(list(sample_calls(RECORDS, seed=22, persons=PERSONS)))
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())
    events, _profiles = expected_of(calls)
    started = time.monotonic()
    # Klaviyo's windows shrunk tenfold, at the sandbox and in the governor alike (its headers
    # pace the governor even when it enforces nothing): small batches make many requests, so
    # many faults, and at the real 150 bulk requests a minute the pacing, not the faults, set
    # the test's length (45 s instead of 15)
    sandbox_config = SandboxConfig(rate_limits=False, fault_seed=3, time_scale=0.1)
    with SandboxThread(sandbox_config) as sandbox:
        async with aiohttp.ClientSession() as http:
            await http.post(f"{sandbox.url}/sandbox/faults", json={"fault_rate": 0.2})
            env = service_env(
                kafka_bootstrap, topic, sandbox.url, state_dir(),
                batch_max_events=200, klaviyo_rate_time_scale=0.1,
            )  # fmt: skip
            service = ServiceProcess(env, tmp_path / "svc.log")
            try:
                service.start()
                await _events_reach(service, sandbox.url, len(events) // 2)
                during = await stats(sandbox.url)
                await http.post(f"{sandbox.url}/sandbox/faults", json={"fault_rate": 0.0})
                await _run_to_the_end(service, sandbox.url, kafka_bootstrap, topic, len(events))
            finally:
                service.stop_quietly()
        # a request Klaviyo applied whose answer was lost (drop_after) is retried and refused
        await assert_exactly_once(sandbox.url, calls, replays_allowed=True)
        final = await stats(sandbox.url)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    faults = during["faults"]
    assert {"500", "503", "429"} <= set(faults), faults
    assert faults.get("drop", 0) + faults.get("drop_after", 0) > 0, faults
    print(
        f"{RECORDS} records, faults while at 20 %: {faults}, "
        f"{final['refused_duplicates']} replays refused, {time.monotonic() - started:.0f} s"
    )
