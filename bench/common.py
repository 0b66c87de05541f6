"""What every benchmark needs: a real broker, a fast publisher, the sandbox in its own process,
raw consume+decode as a baseline, and a service run that reports wall and CPU time.

Benchmarks print figures and ratios measured in the same run; they never assert timings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's `stream`, not an editable install's

from stream.core.settings import SANDBOX_API_KEY, Settings  # noqa: E402
from stream.engine.service import Service  # noqa: E402
from stream.intake.decode import LocalDecoder  # noqa: E402
from stream.local.kafka import LocalKafka  # noqa: E402
from stream.local.sample import sample_calls  # noqa: E402
from stream.ops.produce import Encoder, key_of  # noqa: E402

POOL = 2_000  # distinct encoded calls; records differ by their 36-character messageId


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", help="use this broker instead of starting a local one")
    p.add_argument(
        "--validate",
        action="store_true",
        help="keep the sandbox's OpenAPI (jsonschema) validation on: it then is the bottleneck",
    )
    return p


def machine() -> str:
    """One line describing where the figures were measured."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " + (
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# broker and topics ----------------------------------------------------------------------------


class Broker:
    """`--bootstrap` if given, else a local Kafka started for the run."""

    def __init__(self, bootstrap: str | None) -> None:
        self._kafka = None if bootstrap else LocalKafka()
        self.bootstrap = bootstrap or ""

    def __enter__(self) -> Broker:
        if self._kafka is not None:
            self.bootstrap = self._kafka.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._kafka is not None:
            self._kafka.stop()

    def topic(self, prefix: str, partitions: int = 3) -> str:
        """A new topic with a leader on every partition."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        while True:
            meta = admin.list_topics(topic=name, timeout=5).topics.get(name)
            ready = meta is not None and meta.error is None and len(meta.partitions) == partitions
            if ready and all(p.leader >= 0 for p in meta.partitions.values()):
                return name
            time.sleep(0.05)


def records(
    count: int, seed: int = 5, tracks_only: bool = False, sequential_ids: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    """`count` (key, value) records of realistic calls, every messageId unique.

    Encoding a million calls one by one would take longer than the benchmark: a pool of encoded
    calls is reused and only the messageId (36 bytes, same length) is replaced.
    """
    encoder = Encoder()
    pool = []
    for call in sample_calls(POOL, seed=seed, persons=POOL // 20):
        if tracks_only and call["type"] != "track":
            continue
        pool.append((call["messageId"].encode(), key_of(call) or b"", encoder.encode(call)))
    # random messageIds, as producers make them (uuid4): the dedup store's inserts land all
    # over its index; `sequential_ids` (0, 1, 2, …) always append at its end, the best case
    rng = random.Random(seed)
    for n in range(count):
        mid, key, value = pool[n % len(pool)]
        fresh = (
            uuid.UUID(int=n) if sequential_ids else uuid.UUID(int=rng.getrandbits(128), version=4)
        )
        yield key, value.replace(mid, str(fresh).encode(), 1)


def publish(
    bootstrap: str, topic: str, count: int, tracks_only: bool = False, sequential_ids: bool = False
) -> float:
    """Produce `count` records; returns seconds taken."""
    return produce(
        bootstrap, topic, records(count, tracks_only=tracks_only, sequential_ids=sequential_ids)
    )


def produce(bootstrap: str, topic: str, pairs: Iterable[tuple[bytes, bytes]]) -> float:
    """Produce (key, value) pairs as fast as librdkafka takes them; returns seconds taken."""
    started = time.perf_counter()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    for key, value in pairs:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("records left unpublished")
    return time.perf_counter() - started


def raw_consume_decode(bootstrap: str, topic: str, count: int) -> float:
    """Baseline: consume(1000) + schemaless decode of every record; returns records/s."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "queued.max.messages.kbytes": 65_536,
        }
    )
    consumer.subscribe([topic])
    decoder = LocalDecoder()
    seen = 0
    started = 0.0
    try:
        while seen < count:
            batch = consumer.consume(1000, 1.0)
            if batch and not started:
                started = time.perf_counter()
            for message in batch:
                decoder.decode(message.value())
            seen += len(batch)
        return count / (time.perf_counter() - started)
    finally:
        consumer.close()


# the sandbox in its own process --------------------------------------------------------------


@dataclass
class SandboxProcess:
    """`stream.local.sandbox` served by a child process (so its CPU is not the service's)."""

    rate_limits: bool = True
    time_scale: float = 1.0
    validate: bool = False
    extra: tuple[str, ...] = ()  # more arguments of sandbox_process.py
    url: str = ""
    _proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SandboxProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [
            sys.executable,
            str(Path(__file__).with_name("sandbox_process.py")),
            "--port",
            str(port),
            "--time-scale",
            str(self.time_scale),
        ]
        if not self.rate_limits:
            cmd.append("--no-rate-limits")
        if not self.validate:
            cmd.append("--no-validation")
        cmd.extend(self.extra)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().decode()
        if "http://" not in line:
            raise RuntimeError(f"sandbox did not start: {line!r}")
        self.url = line.split()[-1]
        return self

    def cpu_seconds(self) -> float:
        """CPU time the sandbox process has used so far (user + system)."""
        assert self._proc is not None
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(30)  # a sandbox holding a million catalog items takes a while
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


# the service ----------------------------------------------------------------------------------


def settings(
    bootstrap: str, topic: str, sandbox_url: str, state_dir: str, **extra: Any
) -> Settings:
    """Service settings for a benchmark run (fresh group, its own state file)."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topics": (topic,),
        "kafka_group_id": f"bench-{topic}",
        "dlq_topic": f"{topic}-dlq",
        "klaviyo_base_url": sandbox_url,
        "klaviyo_api_key": SANDBOX_API_KEY,
        "state_url": f"sqlite:///{state_dir}/state.db",
        "metrics_port": 0,
        "log_level": "WARNING",
    }
    values.update(extra)
    return Settings(**values)


@dataclass
class RunFigures:
    """What one service run measured."""

    records: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.wall_seconds

    @property
    def cpu_rate(self) -> float:
        """Records per CPU-second of this process: the rate if the service had a core to itself."""
        return self.records / self.cpu_seconds


async def run_until_done(service: Service, count: int, timeout: float = 900) -> RunFigures:
    """Run the service until `count` records are consumed and finished; wall + CPU from the
    first consumed record to the last finished one."""
    task = asyncio.create_task(service.run())
    deadline = time.monotonic() + timeout
    started = cpu0 = 0.0
    try:
        while time.monotonic() < deadline:
            if task.done():
                task.result()
                raise RuntimeError("service stopped early")
            consumed = service.result.consumed
            if consumed and not started:
                started, cpu0 = time.perf_counter(), time.process_time()
            if consumed >= count and service.pending == 0:
                return RunFigures(count, time.perf_counter() - started, time.process_time() - cpu0)
            await asyncio.sleep(0.02)
        raise RuntimeError(f"not done after {timeout} s: {service.result.consumed} consumed")
    finally:
        service.stop()
        await asyncio.wait_for(task, 120)


# a governed run: the service against the sandbox's real (time-scaled) limits ------------------


@dataclass
class GovernedFigures:
    """Delivered rate over a measured interval, against the endpoint's theoretical ceiling."""

    endpoint: str
    seconds: float
    events: int
    ceiling_events: float
    requests: int
    throttled: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def of_ceiling(self) -> float:
        return self.events / self.ceiling_events

    @property
    def throttled_share(self) -> float:
        return self.throttled / max(self.requests, 1)


async def _stats(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url + "/sandbox/stats") as resp:
        return dict(await resp.json())


def _count(stats: dict[str, Any], endpoint: str) -> tuple[int, int]:
    answered = stats["requests"].get(f"POST {endpoint}", {})
    return sum(answered.values()), int(answered.get("429", 0))


async def governed_run(
    bootstrap: str,
    topic: str,
    sandbox_url: str,
    *,
    time_scale: float,
    batch_events: int,
    windows: float,
    warmup_windows: float = 0.5,
) -> GovernedFigures:
    """Run the service with the governor at `time_scale` and measure `windows` steady windows
    (after a warm-up) of delivered events on the endpoint the batch size selects."""
    from stream.klaviyo.client import EVENTS, EVENTS_BULK
    from stream.klaviyo.governor import STEADY_WINDOW, Governor

    endpoint = EVENTS if batch_events == 1 else EVENTS_BULK
    window = STEADY_WINDOW * time_scale
    with tempfile.TemporaryDirectory() as state:
        service = Service(
            settings(
                bootstrap,
                topic,
                sandbox_url,
                state,
                batch_max_events=batch_events,
                klaviyo_rate_time_scale=time_scale,
                klaviyo_max_in_flight=16 if batch_events == 1 else 8,
                klaviyo_max_connections=16,
            )
        )
        task = asyncio.create_task(service.run())
        try:
            while (await _stats(sandbox_url))["events"] == 0:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
            await asyncio.sleep(warmup_windows * window)
            first = await _stats(sandbox_url)
            t0 = time.perf_counter()
            await asyncio.sleep(windows * window)
            last = await _stats(sandbox_url)
            seconds = time.perf_counter() - t0
        finally:
            service.stop()
            await asyncio.wait_for(task, 300)
    requests0, throttled0 = _count(first, endpoint)
    requests1, throttled1 = _count(last, endpoint)
    ceiling = Governor(time_scale=time_scale).ceiling(endpoint, seconds) * batch_events
    return GovernedFigures(
        endpoint,
        seconds,
        last["events"] - first["events"],
        ceiling,
        requests1 - requests0,
        throttled1 - throttled0,
    )


def governed_bench(
    args: argparse.Namespace, batch_events: int, records: int, prefix: str
) -> GovernedFigures:
    """One measured run: a broker, the sandbox with Klaviyo's (time-scaled) limits, a backlog
    of `records` track calls, and the governed service delivering `batch_events` per request."""
    with (
        Broker(args.bootstrap) as broker,
        SandboxProcess(
            rate_limits=True, time_scale=args.time_scale, validate=args.validate
        ) as sandbox,
    ):
        topic = broker.topic(prefix)
        publish(broker.bootstrap, topic, records, tracks_only=True)
        return asyncio.run(
            governed_run(
                broker.bootstrap,
                topic,
                sandbox.url,
                time_scale=args.time_scale,
                batch_events=batch_events,
                windows=args.windows,
            )
        )
