"""The fault tests' harness: the service as a real process, and the checks every test makes.

`ServiceProcess` runs `python -m stream run` with settings in its environment (nothing
inherited that could change them), its JSON logs in a file the secret test greps. The checks
read the sandbox (what "Klaviyo" stored), the consumer group's committed offsets and the
dead-letter topic, all through the real broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.produce import Encoder, publish
from stream.settings import SANDBOX_API_KEY, Settings
from tests.kafka_fixture import wait_for_leaders
from tests.support import sandbox_get


def service_env(
    bootstrap: str, topic: str, sandbox_url: str, state_dir: Path, **extra: Any
) -> dict[str, str]:
    """Environment of one service process: the test's settings, none of the caller's."""
    names = {name.upper() for name in Settings.model_fields} | {"KLAVIYO_STREAM_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    settings: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topics": topic,
        "kafka_group_id": f"group-{topic}",
        "dlq_topic": f"{topic}-dlq",
        "klaviyo_base_url": sandbox_url,
        "klaviyo_api_key": SANDBOX_API_KEY,
        "batch_linger_ms": 50,
        "metrics_port": 0,
        "state_url": f"sqlite:///{state_dir}/state.db",
        "log_level": "INFO",
    }
    settings.update(extra)
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


class ServiceProcess:
    """`python -m stream run` as a child process; its stdout and stderr go to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "stream", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed or committed."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=30)

    def terminate(self, timeout: float = 90.0) -> int:
        """SIGTERM and wait for the exit code (graceful shutdown)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout=timeout)

    def wait(self, timeout: float) -> int:
        assert self._process is not None
        return self._process.wait(timeout=timeout)

    def stop_quietly(self) -> None:
        """Cleanup after a failed test: kill whatever still runs."""
        if self.alive:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def state_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="reliability-state-"))


def create_topic(bootstrap: str, name: str, partitions: int, **config: str) -> str:
    """A topic with per-topic config (`max.message.bytes` for the oversized-record case)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)]
    )
    futures[name].result(timeout=30)
    wait_for_leaders(admin, name, partitions, timeout=30)
    return name


_COORDINATOR_MOVING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
}


def committed_lag(bootstrap: str, group: str, topic: str) -> int:
    """Records of `topic` above the group's committed offsets (all of them before a commit).
    A coordinator still moving (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS right after a
    group appears) is asked again, up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return _committed_lag(bootstrap, group, topic)
        except KafkaException as exc:
            error = exc.args[0]
            moving = error.retriable() or error.code() in _COORDINATOR_MOVING
            if not moving or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the coordinator settles: a poll interval, not a wait for a result


def _committed_lag(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in meta.partitions]
        lag = 0
        for tp in consumer.committed(tps, timeout=10):
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


def topic_size(bootstrap: str, topic: str) -> int:
    """Records in a topic (0 when it does not exist: nothing was ever written to it)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{time.time_ns()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


async def stats(sandbox_url: str) -> dict[str, Any]:
    result: dict[str, Any] = await sandbox_get(sandbox_url, "/sandbox/stats")
    return result


async def assert_exactly_once(
    sandbox_url: str, expected_events: set[str], expected_profiles: set[str]
) -> Counter[str]:
    """Every expected event stored once (by unique_id = messageId), none extra; one profile
    per expected person (by external_id), none extra. Returns the unique_id counts."""
    events = (await sandbox_get(sandbox_url, "/sandbox/events"))["events"]
    counts = Counter(e["unique_id"] for e in events)
    missing = expected_events - set(counts)
    extra = set(counts) - expected_events
    doubled = {k: v for k, v in counts.items() if v > 1}
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} unexpected events, e.g. {sorted(extra)[:3]}"
    assert not doubled, f"{len(doubled)} events stored more than once, e.g. {list(doubled)[:3]}"
    profiles = (await sandbox_get(sandbox_url, "/sandbox/profiles"))["profiles"]
    external = Counter(p["attributes"].get("external_id") for p in profiles)
    assert set(external) == expected_profiles, "profiles lost or invented"
    assert max(external.values(), default=1) == 1, "a person has two profiles"
    return counts


def publish_paced(bootstrap: str, topic: str, calls: list[dict[str, Any]], seconds: float) -> None:
    """Publish `calls` spread over about `seconds`: load that keeps arriving during a test."""
    chunks = max(1, int(seconds * 4))
    size = -(-len(calls) // chunks)
    encoder = Encoder()
    for start in range(0, len(calls), size):
        publish({"bootstrap.servers": bootstrap}, topic, calls[start : start + size], encoder)
        time.sleep(seconds / chunks)  # pacing, not waiting for a condition
