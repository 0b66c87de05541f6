"""A rolling upgrade: replicas of the previous release and of this one in one group, sharing one
Redis state store, while records flow; then the old replica leaves. Nothing is lost or stored
twice, every event on its person's profile, one profile per person, and the store ends in this
release's layout.

The previous release is taken from this repository's own history (`git archive`), so the test
runs the code that really ran before: update PREVIOUS_RELEASE when a release lands.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.intake.avro import load_schemas
from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder
from stream.state.redis import LAYOUT_VERSION as REDIS_LAYOUT
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
)

PREVIOUS_RELEASE = "fc3470d78fd230b98c811ca2f0c941ce0e981a94"  # 0.1.0, the last landed main
ROOT = Path(__file__).resolve().parents[2]


def previous_release(into: Path) -> Path:
    """The previous release's source tree (its `stream` and `schemas`), from git history."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_RELEASE,
             "stream", "schemas"],
            capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the previous release is not in this clone's history: {exc}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


async def test_old_and_new_replicas_share_a_group_and_a_store_during_the_rollout(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, clean_redis_url: str
) -> None:
    old_tree = previous_release(tmp_path / "previous")
    topic = topic_factory(partitions=4)
    calls = list(sample_calls(6_000, seed=61, persons=300))
    events, _profiles = expected_of(calls)
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), state_url=clean_redis_url
        )
        old = ServiceProcess(env, tmp_path / "old.log", cwd=old_tree)
        new = ServiceProcess(env, tmp_path / "new.log")

        async def delivered(count: int) -> bool:
            assert old.alive or new.alive
            return int((await stats(sandbox.url))["events"]) >= count

        # the producers still write what the old replicas read (the new ones read it too)
        old_schemas = Encoder(schemas=load_schemas(old_tree / "schemas"))
        load = asyncio.create_task(
            asyncio.to_thread(publish_paced, kafka_bootstrap, topic, calls, 20.0, old_schemas)
        )
        try:
            old.start()
            await wait_until(lambda: delivered(len(events) // 5), timeout=120, what="old alone")
            new.start()  # the rollout begins: both versions in the group

            async def both_assigned() -> bool:
                assert old.alive, old.log()[-3000:]
                assert new.alive, new.log()[-3000:]
                return "partitions assigned" in new.log()

            await wait_until(both_assigned, timeout=120, what="the new replica in the group")
            at_join = int((await stats(sandbox.url))["events"])
            await wait_until(
                lambda: delivered(at_join + len(events) // 5), timeout=120, what="both working"
            )
            assert old.terminate() == 0, old.log()[-3000:]  # the old pod is replaced

            async def finished() -> bool:
                assert new.alive, new.log()[-3000:]
                if int((await stats(sandbox.url))["events"]) < len(events):
                    return False
                return committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0

            await load
            await wait_until(finished, timeout=300, what="everything after the rollout")
            assert new.terminate() == 0
        finally:
            await asyncio.gather(load, return_exceptions=True)
            old.stop_quietly()
            new.stop_quietly()
        await assert_exactly_once(sandbox.url, calls)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    with redis.Redis.from_url(clean_redis_url) as r:
        assert r.get("ks:layout") == str(REDIS_LAYOUT).encode()
