"""Scale-out correctness: 3 consumer processes, 6 partitions, the Redis state backend.

One person's calls are spread over partitions (keyed by anonymousId on the web, by userId in
the app), duplicated and partly out of order; the sandbox must still end with exactly one
profile per identified person, every event once on the right profile, anonymous events
delivered after identification, and nothing for persons who never identified.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.core.settings import SANDBOX_API_KEY
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.local.scenario import build_scenario
from stream.ops.produce import Encoder, publish
from tests.support import sandbox_get, wait_until
from tests.support.harness import stopped_records

CONSUMERS = 3


def start_consumer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "stream", "run"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
async def test_three_consumers_keep_one_profile_per_person_and_each_event_once(
    kafka_bootstrap: str, topic_factory: Any, clean_redis_url: str, tmp_path: Path
) -> None:
    scenario = build_scenario(persons=250, seed=5)
    truth = scenario.truth
    topic = topic_factory(partitions=6)
    publish({"bootstrap.servers": kafka_bootstrap}, topic, scenario.calls, Encoder())

    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": f"group-{topic}",
            "DLQ_TOPIC": f"{topic}-dlq",
            "KLAVIYO_BASE_URL": sandbox.url,
            "KLAVIYO_API_KEY": SANDBOX_API_KEY,
            "STATE_URL": clean_redis_url,
            "METRICS_PORT": "0",
            "BATCH_LINGER_MS": "50",
        }
        logs = [tmp_path / f"consumer-{n}.log" for n in range(CONSUMERS)]
        consumers = [start_consumer(env, log) for log in logs]
        try:

            async def settled() -> bool:
                stats = await sandbox_get(sandbox.url, "/sandbox/stats")
                return (
                    stats["events"] >= len(truth.event_owner)
                    and stats["profiles"] <= len(truth.persons)
                    and stats["profiles"] > 0
                    and all(c.poll() is None for c in consumers)
                )

            await wait_until(settled, timeout=240, what="all events delivered")
            # let in-flight merges and upserts finish before reading the final state
            for consumer in consumers:
                consumer.send_signal(signal.SIGTERM)
            codes = [consumer.wait(timeout=60) for consumer in consumers]
        finally:
            for consumer in consumers:
                if consumer.poll() is None:
                    consumer.kill()
        assert codes == [0] * CONSUMERS, [log.read_text()[-3000:] for log in logs]
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]

    # one profile per identified person, nobody else
    by_user = {p["attributes"]["external_id"]: p for p in profiles}
    assert len(profiles) == len(truth.persons), (len(profiles), len(truth.persons))
    assert set(by_user) == set(truth.persons)
    for user_id, person in truth.persons.items():
        attrs = by_user[user_id]["attributes"]
        assert attrs["email"] == person.email
        assert attrs["phone_number"] == person.phone
        assert attrs["first_name"] == person.final_traits()["firstName"]
        assert by_user[user_id]["properties"]["plan"] == person.final_traits()["plan"]
    # every event once, on its person's profile
    counts = Counter(e["unique_id"] for e in events)
    assert set(counts) == set(truth.event_owner)
    assert max(counts.values()) == 1
    owner_of_profile = {p["id"]: p["attributes"]["external_id"] for p in profiles}
    for event in events:
        assert owner_of_profile[event["profile_id"]] == truth.event_owner[event["unique_id"]]
    # anonymous browsing arrived after identification; never-identified visitors sent nothing
    assert truth.released <= set(counts)
    assert not truth.never_identified & set(counts)
    # no record was given up on (a failed heal would have dead-lettered an upsert)
    stops = [stop for log in logs for stop in stopped_records(log.read_text())]
    assert len(stops) == CONSUMERS and all(s["dead_lettered"] == 0 for s in stops), stops
    with redis.Redis.from_url(clean_redis_url) as client:
        assert client.dbsize() > 0  # the shared identity graph lives in Redis
