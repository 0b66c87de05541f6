"""Crashes: SIGKILL at random points of a 100,000-record run (and of a 20,000-record one through
the real Schema Registry), and SIGTERM mid-run.

The service runs as a real process against the real broker and the sandbox. After every
kill it is restarted at once; at the end every event is stored exactly once at the sandbox
(what was re-read was refused by the dedup store or by `unique_id`), every person has one
profile, and nothing went to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

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
from tests.support.registry import Registry

RECORDS = 100_000
PERSONS = 2_000
KILLS = 6
REGISTRY_RECORDS = 20_000  # once more through the real registry: its own part, at less cost
REGISTRY_KILLS = 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoding", "records", "kills"),
    [("local", RECORDS, KILLS), ("registry", REGISTRY_RECORDS, REGISTRY_KILLS)],
)
async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, request: pytest.FixtureRequest,
    encoding: str, records: int, kills: int,
) -> None:
    """In both encodings: with the real Schema Registry (Apicurio), each restarted process
    fetches the writer schemas again."""
    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    rng = random.Random(seed)
    topic = topic_factory(partitions=4)
    calls = with_duplicates(list(sample_calls(records, seed=seed, persons=PERSONS)))
    extra: dict[str, str] = {}
    if encoding == "registry":
        registry: Registry = request.getfixturevalue("registry")
        extra = registry.settings("reader")
        with registry.client("writer") as client:
            encoder = Encoder(registry=client, topic=topic)
            publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, encoder)
    else:
        publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())
    events, _profiles = expected_of(calls)
    # kill points: random numbers of delivered events, spread over the whole run
    points = sorted(rng.sample(range(len(events) // 20, len(events) * 19 // 20), kills))
    started = time.monotonic()
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), kafka_group_instance_id="crashy",
            **extra,
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        try:
            for point in points:
                service.start()

                async def reached(point: int = point) -> bool:
                    assert service.alive, service.log()[-3000:]
                    return int((await stats(sandbox.url))["events"]) >= point

                await wait_until(reached, timeout=300, what=f"{point} events before a kill")
                # a random moment after the threshold: inside a batch, not at its edge
                await asyncio.sleep(rng.uniform(0, 0.3))
                service.kill()
            service.start()

            async def finished() -> bool:
                assert service.alive, service.log()[-3000:]
                if int((await stats(sandbox.url))["events"]) < len(events):
                    return False
                return committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0

            await wait_until(finished, timeout=600, what="every record delivered and committed")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        await assert_exactly_once(sandbox.url, calls, replays_allowed=True)  # the crash window
        final = await stats(sandbox.url)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    if encoding == "registry":  # the registry's password never in what the service logged
        assert extra["schema_registry_basic_auth_user_info"].split(":", 1)[1] not in service.log()
    print(
        f"{records} records ({encoding}), {kills} SIGKILLs at {points} events, "
        f"{service.starts} starts, "
        f"{final['refused_duplicates']} replays refused by unique_id, "
        f"{time.monotonic() - started:.0f} s"
    )


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_work_and_commits_it(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """After a graceful stop mid-run, the next run reads exactly the records not yet done:
    nothing twice (everything finished was committed), nothing skipped."""
    topic = topic_factory(partitions=3)
    calls = with_duplicates(list(sample_calls(20_000, seed=12, persons=500)))
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())
    events, _profiles = expected_of(calls)
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        # a small pending bound: the stop comes with work left over for the next run
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), max_pending_records=2000
        )
        first = ServiceProcess(env, tmp_path / "first.log")
        second = ServiceProcess(env, tmp_path / "second.log")
        try:
            first.start()

            async def a_quarter() -> bool:
                assert first.alive, first.log()[-3000:]
                return int((await stats(sandbox.url))["events"]) >= len(events) // 4

            await wait_until(a_quarter, timeout=300, what="a quarter of the events")
            assert first.terminate(timeout=90) == 0, first.log()[-3000:]
            at_stop = await stats(sandbox.url)
            second.start()

            async def finished() -> bool:
                assert second.alive, second.log()[-3000:]
                if int((await stats(sandbox.url))["events"]) < len(events):
                    return False
                return committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0

            await wait_until(finished, timeout=300, what="the rest after the restart")
            assert "partitions assigned" in second.log()
            assert second.terminate() == 0
        finally:
            first.stop_quietly()
            second.stop_quietly()
        await assert_exactly_once(sandbox.url, calls)
        final = await stats(sandbox.url)
    consumed = [p.stopped()[-1]["consumed"] for p in (first, second)]
    assert at_stop["events"] < len(events), "the first run finished everything: no test"
    assert sum(consumed) == len(calls), consumed
    assert final["refused_duplicates"] == 0
