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
from confluent_kafka import Producer

from stream.intake.avro import load_schemas
from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder
from stream.state.redis import LAYOUT_VERSION as REDIS_LAYOUT
from tests.support import sandbox_get, wait_until
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

PREVIOUS_RELEASE = "696d06771bf75b6050fba64e2cf05b823b005399"  # the last landed main
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


@pytest.mark.slow
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


async def test_deletions_during_the_rollout_are_applied_by_either_release(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, clean_redis_url: str
) -> None:
    """While replicas of the previous release are in the group, a delete call is applied by
    whichever replica reads it: an old one as the previous release did (its partition's fence,
    a deletion per identifier), a new one with the group-wide fence, which counts only the
    replicas that publish a mark (the new ones): work an old replica has on the wire is not
    waited for until the rollout is done. Either way the person is erased and nobody else."""
    old_tree = previous_release(tmp_path / "previous")
    topic = topic_factory(partitions=2)
    old_schemas = Encoder(schemas=load_schemas(old_tree / "schemas"))
    with SandboxThread(SandboxConfig(rate_limits=False, deletion_delay_seconds=0.05)) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), state_url=clean_redis_url
        )
        old = ServiceProcess(env, tmp_path / "old.log", cwd=old_tree)
        new = ServiceProcess(env, tmp_path / "new.log")
        try:
            old.start()  # the old replica runs first (it refuses a newer layout at start)

            async def old_assigned() -> bool:
                assert old.alive, old.log()[-3000:]
                return "partitions assigned" in old.log()

            await wait_until(old_assigned, timeout=120, what="the old replica in the group")
            new.start()

            async def both_assigned() -> bool:
                assert old.alive, old.log()[-3000:]
                assert new.alive, new.log()[-3000:]
                return "partitions assigned" in new.log() and "partitions assigned" in old.log()

            await wait_until(both_assigned, timeout=120, what="both releases in the group")
            people = [("u-ann", "ann@x.io"), ("u-bo", "bo@x.io")]
            for partition in (0, 1):  # each person on both partitions: both releases see them
                publish_partitioned(kafka_bootstrap, topic, partition, old_schemas, [
                    {"type": "identify", "messageId": f"i-{user}-{partition}",
                     "timestamp": "2026-11-01T10:00:00Z", "userId": user,
                     "traits": {"email": email}}
                    for user, email in people
                ])  # fmt: skip

            async def known() -> bool:
                return len((await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]) == 2

            await wait_until(known, timeout=60, what="both profiles")
            for partition in (0, 1):  # the delete call, read by whichever owns its partition
                publish_partitioned(kafka_bootstrap, topic, partition, old_schemas, [
                    {"type": "delete", "messageId": f"d-ann-{partition}",
                     "timestamp": "2026-11-01T11:00:00Z", "userId": "u-ann"},
                ])  # fmt: skip

            async def erased() -> bool:
                profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
                return [p["attributes"]["email"] for p in profiles] == ["bo@x.io"] and (
                    committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0
                )

            await wait_until(erased, timeout=120, what="Ann erased by either release")
            assert old.terminate() == 0, old.log()[-3000:]
            assert new.terminate() == 0, new.log()[-3000:]
        finally:
            old.stop_quietly()
            new.stop_quietly()
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0


def publish_partitioned(
    bootstrap: str, topic: str, partition: int, encoder: Encoder, calls: list[dict[str, Any]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for call in calls:
        producer.produce(topic, encoder.encode(call), partition=partition)
    assert producer.flush(30) == 0
