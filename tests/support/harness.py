"""The fault tests' harness: the service as a real process, and the checks every test makes.

`ServiceProcess` runs `python -m stream run` with settings in its environment (nothing
inherited that could change them), its JSON logs in a file the secret test greps. The checks
read the sandbox (what "Klaviyo" stored), the consumer group's committed offsets and the
dead-letter topic, all through the real broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.core.settings import SANDBOX_API_KEY, Settings
from stream.ops.produce import Encoder, publish
from tests.support import sandbox_get
from tests.support.kafka import wait_for_leaders


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

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.cwd = cwd  # another release's source tree (its `stream` package comes first)
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "stream", "run"],
                env=self.env,
                cwd=self.cwd,
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
        return self.signal(signal.SIGTERM, timeout)

    def signal(self, sig: int, timeout: float) -> int:
        """Send `sig` (SIGTERM, SIGINT) and wait for the exit code; `subprocess.TimeoutExpired`
        when the process is still running after `timeout` seconds."""
        assert self._process is not None
        self._process.send_signal(sig)
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

    def stopped(self) -> list[dict[str, Any]]:
        """The `stopped` log record of each graceful exit so far, in order."""
        return stopped_records(self.log())


def stopped_records(log: str) -> list[dict[str, Any]]:
    """The `"msg": "stopped"` JSON lines of a service log (counts of consumed and dead-lettered
    records a run ends with), parsed."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")
            and '"msg": "stopped"' in line]


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


async def stats(sandbox_url: str, account: str | None = None) -> dict[str, Any]:
    """The sandbox's counts (of `account`, when it serves several)."""
    result: dict[str, Any] = await sandbox_get(sandbox_url, "/sandbox/stats" + _of(account))
    return result


def _of(account: str | None) -> str:
    """The query naming one of a multi-account sandbox's accounts (none: the default one)."""
    return f"?account={account}" if account else ""


def expected_of(calls: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(messageIds that must become events, userIds that must become profiles)."""
    events = {c["messageId"] for c in calls if c["type"] in ("track", "page")}
    profiles = {c["userId"] for c in calls if c["type"] == "identify"}
    return events, profiles


def with_duplicates(calls: list[dict[str, Any]], every: int = 40) -> list[dict[str, Any]]:
    """`calls` with a copy of every `every`-th track or page published again further on (the
    same messageId): a producer's retry. Our dedup must drop them before Klaviyo sees them."""
    copies: dict[int, list[dict[str, Any]]] = {}
    events = [(i, c) for i, c in enumerate(calls) if c["type"] in ("track", "page")]
    for i, call in events[::every]:
        copies.setdefault(min(i + 50, len(calls) - 1), []).append(dict(call))
    out: list[dict[str, Any]] = []
    for i, call in enumerate(calls):
        out.append(call)
        out.extend(copies.get(i, []))
    return out


async def assert_exactly_once(
    sandbox_url: str,
    calls: list[dict[str, Any]],
    *,
    replays_allowed: bool = False,
    account: str | None = None,
) -> Counter[str]:
    """What the promises say, checked at the sandbox (what "Klaviyo" stored):

    - every expected event stored once (by unique_id = messageId), none extra;
    - on the right profile: the one holding the email its person identified with;
    - with its content: metric, properties, value and currency, time (to the second);
    - one profile per person (by external_id), none extra;
    - unless `replays_allowed` (the crash window docs/guarantees.md names), Klaviyo refused no
      replay: the service's own dedup caught every copy it could have caught.
    `account`: what that account of a multi-account sandbox stored. Returns the unique_id
    counts."""
    expected = {c["messageId"]: c for c in calls if c["type"] in ("track", "page")}
    emails = {c["userId"]: c["traits"]["email"] for c in calls if c["type"] == "identify"}
    events = (await sandbox_get(sandbox_url, "/sandbox/events" + _of(account)))["events"]
    counts = Counter(e["unique_id"] for e in events)
    missing = set(expected) - set(counts)
    extra = set(counts) - set(expected)
    doubled = {k: v for k, v in counts.items() if v > 1}
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} unexpected events, e.g. {sorted(extra)[:3]}"
    assert not doubled, f"{len(doubled)} events stored more than once, e.g. {list(doubled)[:3]}"
    profiles = (await sandbox_get(sandbox_url, "/sandbox/profiles" + _of(account)))["profiles"]
    owner = {}  # profile id (merged ids too) -> the live profile's email
    for p in profiles:
        for pid in [p["id"], *p.get("merged_ids", [])]:
            owner[pid] = p["attributes"].get("email")
    wrong = []
    for event in events:
        call = expected[event["unique_id"]]
        email = emails.get(call.get("userId"))
        if email is not None and owner.get(event["profile_id"]) != email:
            wrong.append((event["unique_id"], email, owner.get(event["profile_id"])))
        metric = call["event"] if call["type"] == "track" else "Viewed Page"
        assert event["metric"] == metric, (event, call)
        props = call.get("properties") or {}
        assert {k: event["properties"].get(k) for k in props} == props, (event, call)
        revenue = props.get("revenue")
        assert event["value"] == revenue, (event, call)
        if revenue is not None:
            assert event["value_currency"] == props.get("currency"), (event, call)
        assert event["time"][:19] == _utc(call["timestamp"])[:19], (event, call)
    assert not wrong, f"{len(wrong)} events on the wrong profile, e.g. {wrong[:3]}"
    external = Counter(p["attributes"].get("external_id") for p in profiles)
    assert set(external) == set(emails), "profiles lost or invented"
    assert max(external.values(), default=1) == 1, "a person has two profiles"
    if not replays_allowed:
        refused = (await stats(sandbox_url, account))["refused_duplicates"]
        assert refused == 0, f"Klaviyo refused {refused} replays our dedup should have dropped"
    return counts


def _utc(timestamp: str) -> str:
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def publish_paced(
    bootstrap: str,
    topic: str,
    calls: list[dict[str, Any]],
    seconds: float,
    encoder: Encoder | None = None,
) -> None:
    """Publish `calls` spread over about `seconds`: load that keeps arriving during a test.

    Each chunk goes through an idempotent producer of its own, flushed before the pause, and a
    new producer's id costs about half a second: the load lasts about three times `seconds`
    (40 s of load took 130 s), in bursts. The rebalance and rolling-upgrade tests were written
    against that load and pass with it; at the steady pace `seconds` suggests both saw Klaviyo
    refuse replays (the rolling upgrade: the previous release does not drain a revoked
    partition; the rebalance: a drain that did not finish within REVOKE_DRAIN_SECONDS)."""
    chunks = max(1, int(seconds * 4))
    size = -(-len(calls) // chunks)
    encoder = encoder or Encoder()
    for start in range(0, len(calls), size):
        publish({"bootstrap.servers": bootstrap}, topic, calls[start : start + size], encoder)
        time.sleep(seconds / chunks)  # pacing, not waiting for a condition


async def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) on a service's /metrics (NaN while
    the service is not listening yet)."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    except aiohttp.ClientConnectionError:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
