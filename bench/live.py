"""Live-stream parts shared by the latency and mixed-traffic benchmarks.

- `ServiceProcess`: `klaviyo-stream run` as its own process (the product as deployed), so its
  CPU share can be read from /proc and py-spy can attach to it;
- `CpuSampler`: that process's CPU share, sampled once a second;
- `Calls`: a pool of encoded identify/track/page calls of many persons, each record made unique
  by its messageId;
- `SteadyPublisher`: publishes at a steady rate, each record's Kafka timestamp set explicitly and
  remembered per messageId (the start of the latency it measures);
- `Acceptances`: when the sandbox accepted each event (`GET /sandbox/acceptances`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common import ROOT
from confluent_kafka import Producer

from stream.core.settings import SANDBOX_API_KEY
from stream.ops.produce import Encoder

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


# the service as its own process --------------------------------------------------------------


@dataclass
class ServiceProcess:
    """`python -m stream run` against `sandbox_url`, consuming `topic` with a fresh group and a
    fresh SQLite state in `state_dir`; `extra` are more settings as environment variables."""

    bootstrap: str
    topic: str
    sandbox_url: str
    state_dir: str
    extra: dict[str, str] = field(default_factory=dict)
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServiceProcess:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPICS": self.topic,
            "KAFKA_GROUP_ID": f"bench-{self.topic}",
            "DLQ_TOPIC": f"{self.topic}-dlq",
            "KLAVIYO_BASE_URL": self.sandbox_url,
            "KLAVIYO_API_KEY": SANDBOX_API_KEY,
            "STATE_URL": f"sqlite:///{self.state_dir}/state.db",
            "METRICS_PORT": str(self.metrics_port),
            "LOG_LEVEL": "WARNING",
            **self.extra,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "run"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ready: partitions assigned, broker reachable
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(  # noqa: S310 (loopback)
                    f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2
                ) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the service did not become ready within 60 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples (with these labels) on the service's /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback)
            text = answer.read().decode()
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name)] in " {"
            and all(w in line for w in wanted)
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class CpuSampler:
    """A process's CPU share, sampled once a second on a thread: `shares` (one per second)."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self._pid = pid
        self._every = every
        self._stop = threading.Event()
        self.shares: list[tuple[float, float]] = []  # (wall time, CPU share of one core)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        wall, cpu = time.monotonic(), cpu_seconds(self._pid)
        while not self._stop.wait(self._every):
            try:
                now, used = time.monotonic(), cpu_seconds(self._pid)
            except OSError:
                return
            self.shares.append((time.time(), (used - cpu) / (now - wall)))
            wall, cpu = now, used

    def mean(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The mean share over the samples taken between two wall times."""
        picked = [share for at, share in self.shares if since <= at <= until]
        return sum(picked) / len(picked) if picked else 0.0


# calls -----------------------------------------------------------------------------------------


class Calls:
    """Encoded calls of `persons` people: identifies (userId, email, traits), and tracks and
    pages by userId (identified, so never held). Each record gets a fresh uuid4 messageId."""

    EVENTS = ("Product Viewed", "Product Added", "Signed Up", "Article Read", "Video Played")

    def __init__(self, persons: int = 20_000, pool: int = 4_000, seed: int = 13) -> None:
        rng = random.Random(seed)
        encoder = Encoder()
        self._rng = rng
        self.identifies: list[tuple[bytes, bytes, bytes]] = []  # (key, value, messageId)
        self.events: list[tuple[bytes, bytes, bytes]] = []
        for n in range(pool):
            person = n % persons  # identifies: the n-th person's
            base = self._base(rng, person)
            identify = {
                "type": "identify",
                **base,
                "traits": {
                    "email": f"person.{person}@example.com",
                    "firstName": "Ada",
                    "lastName": f"Person{person}",
                    "plan": rng.choice(["free", "pro", "enterprise"]),
                    "visits": rng.randrange(1, 100),
                },
            }
            self.identifies.append(self._encoded(encoder, identify))
            base = self._base(rng, rng.randrange(persons))  # events: anyone's
            if n % 10 == 0:
                call = {
                    "type": "page",
                    **base,
                    "name": "Home",
                    "properties": {"url": "https://shop.example.com/", "path": "/"},
                }
            else:
                call = {
                    "type": "track",
                    **base,
                    "event": rng.choice(self.EVENTS),
                    "properties": {
                        "sku": f"SKU-{rng.randrange(1000)}",
                        "price": round(rng.uniform(1, 100), 2),
                        "category": rng.choice(["books", "games", "music"]),
                    },
                }
            self.events.append(self._encoded(encoder, call))

    @staticmethod
    def _base(rng: random.Random, person: int) -> dict[str, Any]:
        return {
            "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "timestamp": "2026-11-29T12:00:00+00:00",
            "userId": f"user-{person}",
            "anonymousId": str(uuid.UUID(int=person, version=4)),
        }

    @staticmethod
    def _encoded(encoder: Encoder, call: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
        return call["userId"].encode(), encoder.encode(call), call["messageId"].encode()

    def make(self, identify: bool, person: int | None = None) -> tuple[bytes, bytes, str]:
        """(key, value, messageId) of one fresh record: an event of anyone, or an identify of
        `person` (of anyone when None)."""
        if identify and person is not None:
            key, value, old = self.identifies[person % len(self.identifies)]
        else:
            key, value, old = self._rng.choice(self.identifies if identify else self.events)
        fresh = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        return key, value.replace(old, fresh.encode(), 1), fresh


def producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )


class SteadyPublisher:
    """Publishes `rate` events/s (tracks and pages) plus identifies, `identify_share` of all
    calls, for `seconds`, on a thread. Each record's Kafka timestamp is set to the moment it is
    produced and kept per messageId in `published` (events only, in ms)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        calls: Calls,
        rate: float,
        seconds: float,
        identify_share: float = 0.05,
    ) -> None:
        self._producer = producer(bootstrap)
        self._topic = topic
        self._calls = calls
        self._rate = rate / (1 - identify_share)  # calls/s, so that events come at `rate`
        self._share = identify_share
        self._seconds = seconds
        self.published: dict[str, int] = {}
        self.identifies = 0
        self.started = 0.0
        self.lagged = 0.0  # the longest the publisher fell behind its schedule, in s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.started = time.time()
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        produce, rng = self._producer.produce, random.Random(7)
        t0 = time.monotonic()
        sent = 0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= self._seconds:
                break
            due = int(elapsed * self._rate)
            self.lagged = max(self.lagged, (due - sent) / self._rate)
            while sent < due:
                identify = rng.random() < self._share
                key, value, message_id = self._calls.make(identify)
                stamp = int(time.time() * 1000)
                while True:
                    try:
                        produce(self._topic, value=value, key=key, timestamp=stamp)
                        break
                    except BufferError:
                        self._producer.poll(0.01)
                if identify:
                    self.identifies += 1
                else:
                    self.published[message_id] = stamp
                sent += 1
            self._producer.poll(0)
            time.sleep(0.002)
        if self._producer.flush(60):
            raise RuntimeError("records left unpublished")


class Acceptances:
    """Polls `GET /sandbox/acceptances`: `received[unique_id]` = acceptance time (Unix s)."""

    def __init__(self, sandbox_url: str) -> None:
        self._url = sandbox_url
        self._next = 0
        self.received: dict[str, float] = {}

    def poll(self) -> int:
        """Fetch what arrived since the last poll; returns how many events are known."""
        page = get_json(f"{self._url}/sandbox/acceptances?start={self._next}")
        received = self.received
        for unique_id, stamp in page["acceptances"]:
            if unique_id is not None and unique_id not in received:
                received[unique_id] = datetime.fromisoformat(stamp).timestamp()
        self._next = page["next"]
        return len(received)


def percentile(ordered: list[float], share: float) -> float:
    """The `share` percentile of sorted values (nearest rank); NaN for none."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(round(share * len(ordered) + 0.5)) - 1))
    return ordered[rank]


class DeletionPublisher:
    """Publishes `rate` erasures a second on a thread, of persons outside the events' pool: an
    identify of `gone-<n>` (so Klaviyo holds a profile), then `lead` seconds later its delete
    call. `published[erasure id]` = when the delete call was produced (Unix s)."""

    def __init__(
        self, bootstrap: str, topic: str, rate: float, seconds: float, lead: float = 5.0
    ) -> None:
        self._producer = producer(bootstrap)
        self._topic = topic
        self._rate = rate
        self._seconds = seconds
        self._lead = lead
        self._encoder = Encoder()
        self.published: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _send(self, call: dict[str, Any]) -> None:
        while True:
            try:
                self._producer.produce(
                    self._topic, self._encoder.encode(call), call["userId"].encode()
                )
                return
            except BufferError:
                self._producer.poll(0.01)

    def _run(self) -> None:
        t0 = time.monotonic()
        count = int(self._rate * self._seconds)
        pending: list[tuple[float, str]] = []  # (when the delete is due, person)
        made = 0
        while made < count or pending:
            now = time.monotonic() - t0
            while made < count and made <= now * self._rate:
                person = f"gone-{made}-{uuid.uuid4().hex[:6]}"
                self._send({
                    "type": "identify", "messageId": str(uuid.uuid4()), "userId": person,
                    "timestamp": datetime.now().astimezone().isoformat(),
                    "traits": {"email": f"{person}@example.com"},
                })  # fmt: skip
                pending.append((now + self._lead, person))
                made += 1
            while pending and pending[0][0] <= now:
                _due, person = pending.pop(0)
                erasure = str(uuid.uuid4())
                self._send({
                    "type": "delete", "messageId": erasure, "userId": person,
                    "timestamp": datetime.now().astimezone().isoformat(),
                })  # fmt: skip
                self.published[erasure] = time.time()
            self._producer.poll(0)
            time.sleep(0.01)
        if self._producer.flush(60):
            raise RuntimeError("records left unpublished")


class Confirmations:
    """When each erasure was confirmed: it was applied (a tombstone names it) and its entry
    is gone from the service's SQLite state (`confirmed[erasure id]` = first seen, Unix s)."""

    def __init__(self, state_url: str) -> None:
        from stream.state import open_store

        self._store = open_store(state_url)
        self._mark = 0
        self._applied: set[str] = set()
        self.confirmed: dict[str, float] = {}

    def poll(self) -> int:
        rows, self._mark = self._store.tombstones(self._mark)
        self._applied.update(tomb.erasure for _, tomb in rows)
        pending = self._store.open_erasures()
        now = time.time()
        for erasure in self._applied - pending - set(self.confirmed):
            self.confirmed[erasure] = now
        return len(self.confirmed)

    def close(self) -> None:
        self._store.close()
