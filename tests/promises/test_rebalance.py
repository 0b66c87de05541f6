"""Rebalances under load: a second consumer joins the group mid-run, then the first leaves.

Records keep arriving (published over 40 s) and partitions move twice while records are in
flight. A revoked partition's in-flight work is finished and committed before it moves
(REVOKE_DRAIN_SECONDS), so its new owner starts right after it: Klaviyo refuses no replay.
Copies of messageIds published again later are dropped by the shared dedup store. The end
state: every event once on the right profile, one profile per person, no dead letters.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxThread
from tests.support import wait_until
from tests.support.harness import (
    ServiceProcess,
    assert_exactly_once,
    committed_lag,
    expected_of,
    publish_paced,
    service_env,
    state_dir,
    stats,
    topic_size,
    with_duplicates,
)

RECORDS = 30_000
PERSONS = 1_500
LOAD_SECONDS = 40.0  # records keep arriving while members join and leave


@pytest.mark.slow
async def test_consumer_joining_and_leaving_under_load(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, clean_redis_url: str
) -> None:
    """Members of one group share one state store (Redis), as docs/operations.md says a group
    must."""
    topic = topic_factory(partitions=6)
    calls = with_duplicates(list(sample_calls(RECORDS, seed=31, persons=PERSONS)))
    events, _profiles = expected_of(calls)
    started = time.monotonic()
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        # the drain is what is tested, not its bound: the default 10 s ran out on a loaded
        # machine (load 9-15 on 2 cores, other suites beside this one) and what is re-read
        # after it is refused by Klaviyo (as documented), failing the no-replay check
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), state_url=clean_redis_url,
            revoke_drain_seconds=60,
        )  # fmt: skip
        first = ServiceProcess(env, tmp_path / "first.log")
        second = ServiceProcess(env, tmp_path / "second.log")

        async def events_reach(count: int) -> None:
            async def reached() -> bool:
                return int((await stats(sandbox.url))["events"]) >= count

            await wait_until(reached, timeout=300, what=f"{count} events")

        load = asyncio.create_task(
            asyncio.to_thread(publish_paced, kafka_bootstrap, topic, calls, LOAD_SECONDS)
        )
        try:
            first.start()
            await events_reach(len(events) // 6)
            second.start()

            async def second_owns_partitions() -> bool:
                assert second.alive, second.log()[-3000:]
                return "partitions assigned" in second.log()

            await wait_until(second_owns_partitions, timeout=120, what="the second member")
            at_join = int((await stats(sandbox.url))["events"])
            await events_reach(at_join + len(events) // 6)
            at_leave = int((await stats(sandbox.url))["events"])
            assert not load.done(), "the load ended before the first member left: no test"
            assert first.terminate() == 0, first.log()[-3000:]

            async def finished() -> bool:
                assert second.alive, second.log()[-3000:]
                if int((await stats(sandbox.url))["events"]) < len(events):
                    return False
                return committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0

            await load
            await wait_until(finished, timeout=600, what="every record delivered and committed")
            assert second.terminate() == 0, second.log()[-3000:]
        finally:
            await asyncio.gather(load, return_exceptions=True)
            first.stop_quietly()
            second.stop_quietly()
        logs = first.log() + second.log()
        assert "revoked with work in flight" not in logs, "a drain outlasted its bound"
        await assert_exactly_once(sandbox.url, calls)
        final = await stats(sandbox.url)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    print(
        f"{RECORDS} records, joined at {at_join} events, left at {at_leave}, "
        f"{final['refused_duplicates']} replays refused, {time.monotonic() - started:.0f} s"
    )
