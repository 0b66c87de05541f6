"""The pipeline in one process, stepped by hand, for the lifecycle model
(tests/engine/test_lifecycle_model.py).

Real parts: one run as `Service.assemble` wires it (the per-record stages `Handler`, the
completion ledger, send lanes, action gate, fence, `Outcomes.deliver`, housekeeping), a state
store of either backend, and the Klaviyo sandbox on the same event loop. What a running
service does on its own (fetch, the send stage's pumps, the heartbeat) is done here one step
at a time, so a test chooses every interleaving:

- `Topic`: a topic in memory (partitions of encoded records, committed offsets);
- `Wire`: API requests can be kept on the wire at the sandbox and answered one by one in any
  order, like a slow Klaviyo answering out of order;
- `Replica`: one service over the store; `fetch` hands records to `Handler.handle` as the fetch loop
  does, `send` takes one batch of a lane and delivers it as the send stage does, `beat` is one
  heartbeat. `crash` leaves the service behind: what it had on the wire still lands (Klaviyo
  got the request), it answers nothing more, and its published mark stays until `expire`;
- `Clock`: the gate's clock (settle times, a new owner's quiet time), moved by the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from confluent_kafka import Message
from pydantic import SecretStr

from stream.completion.deadletter import DeadLetter
from stream.completion.ledger import Ledger
from stream.core.retry import RetryPolicy
from stream.core.settings import SANDBOX_API_KEY, Settings
from stream.delivery.actions import ActionBatch, ActionLane
from stream.delivery.batch import Batch, Lane
from stream.delivery.deliver import Deliverer
from stream.engine.gate import Gate
from stream.engine.parts import AccountParts, Parts
from stream.engine.pipeline import build_client
from stream.engine.service import Running, Service
from stream.intake.source import Drain
from stream.klaviyo.governor import Governor
from stream.klaviyo.mapping import BACKFILL_HEADER
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.local.sandbox.tasks import PENDING
from stream.ops.produce import Encoder, key_of
from stream.state import StateStore, open_store
from tests.support.source import MemorySource, Topics

TOPIC = "calls"
ENCODER = Encoder()
KINDS = ("events", "profiles", "subscribe", "unsubscribe", "suppress", "unsuppress",
         "list_add", "list_remove", "deletion", "confirm")  # fmt: skip
STEP_TIMEOUT = 5.0  # a step that does not settle within this is a hang, not slowness


class Clock:
    """The gate's clock: the monotonic clock plus the time the test let pass."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped

    def advance(self, seconds: float) -> None:
        self.skipped += seconds


@dataclass
class Held:
    """A request the sandbox received and has not answered; `orphan` once its sender died."""

    method: str
    path: str
    body: bytes
    go: asyncio.Event = field(default_factory=asyncio.Event)
    orphan: bool = False


class Wire:
    """Holds the next `stalls` API requests: each is answered when released, in any order
    (the sandbox then applies it, whether or not its client is still there), at most `most` at
    once: a replica keeps `KLAVIYO_MAX_IN_FLIGHT` requests on the wire, and a delivery waiting
    for a slot behind held requests would look like a hang to `settle`. `watch` sees every API
    request as it arrives, with those still on the wire."""

    def __init__(self) -> None:
        self.stalls = 0
        self.most = 1_000  # held at once (see the class)
        self.held: list[Held] = []
        self.watch: Callable[[Held, list[Held]], None] | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            body = await request.read()  # whole: it lands even if its sender dies meanwhile
            arrived = Held(request.method, request.path, body)
            if self.watch is not None:
                self.watch(arrived, list(self.held))
            if self.stalls > 0 and len(self.held) < self.most:
                self.stalls -= 1
                self.held.append(arrived)
                await arrived.go.wait()
        response: web.StreamResponse = await handler(request)
        return response

    def release(self, index: int) -> None:
        self.held.pop(index).go.set()

    def release_all(self) -> None:
        self.stalls = 0
        while self.held:
            self.release(0)

    def orphan_all(self) -> None:
        """Every request held now belongs to a replica that just died."""
        for held in self.held:
            held.orphan = True

    @property
    def waiting(self) -> int:
        """Requests held for a live replica (each blocks one of its deliveries)."""
        return sum(not held.orphan for held in self.held)


@dataclass
class Topic:
    """A topic in memory: encoded records per partition and the group's committed offsets."""

    partitions: int
    logs: dict[int, list[Message]] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    ids: dict[bytes, str] = field(default_factory=dict)  # value -> its call's messageId

    def publish(self, partition: int, call: dict[str, Any], backfill: bool = False) -> int:
        log = self.logs.setdefault(partition, [])
        headers: list[tuple[str, str | bytes | None]] | None = (
            [(BACKFILL_HEADER, b"1")] if backfill else None
        )
        value = ENCODER.encode(call)
        self.ids[value] = call["messageId"]
        log.append(Message(topic=TOPIC, partition=partition, offset=len(log), value=value,
                           key=key_of(call), headers=headers))  # fmt: skip
        return len(log) - 1

    def read(self, partition: int, start: int, count: int) -> list[Message]:
        return self.logs.get(partition, [])[start : start + count]


@dataclass
class Letter:
    message_id: str | None
    label: str | None
    reason: str


class Letters:
    """The dead-letter topic in memory (every write acknowledged); a crashed replica's later
    writes never happen."""

    def __init__(self, sink: list[Letter], ids: dict[bytes, str]) -> None:
        self.sink = sink
        self.ids = ids
        self.dead = False

    async def send(self, letter: DeadLetter) -> None:
        if not self.dead:
            value = letter.record.value
            mid = self.ids.get(value) if value is not None else None
            self.sink.append(Letter(mid, letter.item, f"{letter.stage}: {letter.error}"))

    def close(self, timeout: float = 30.0) -> None:
        pass


class Offsets(MemorySource):
    """The Kafka side of a replica stepped by hand: the test fetches from `Topic` itself; the
    offsets the ledger lets move go to the replica."""

    def __init__(self, replica: Replica, ledger: Ledger, drain: Drain) -> None:
        super().__init__(Topics({}), (), ledger, drain, assign_all=False)
        self.replica = replica

    def store(self, topic: str, partition: int, next_offset: int) -> None:
        if not self.replica.dead:
            self.replica.stored[partition] = next_offset


class Replica:
    """One service over the store, stepped by hand (see the module)."""

    def __init__(
        self, settings: Settings, topic: Topic, clock: Clock, letters: list[Letter]
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.store: StateStore = open_store(settings.state_url)
        self.letters = Letters(letters, topic.ids)
        self.service = Service(
            settings, store=self.store, dead_letters=self.letters,
            source=lambda ledger, drain: Offsets(self, ledger, drain),
        )  # fmt: skip
        self.clock = clock
        self.dead = False
        self.stored: dict[int, int] = {}  # next offsets the ledger let move, not yet committed
        self.positions: dict[int, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._client: Any = None
        self._running: Running | None = None

    @property
    def running(self) -> Running:
        assert self._running is not None, "the replica has not started"
        return self._running

    @property
    def parts(self) -> Parts:
        return self.running.parts

    @property
    def account(self) -> AccountParts:
        """The one account's stages (no accounts file here)."""
        return self.running.parts.only

    @property
    def fence_id(self) -> str:
        fence = self.account.fence
        assert fence is not None
        return fence.replica

    async def start(self) -> None:
        """The run `Service.assemble` wires, with the send stage's pumps and the heartbeat left
        to the test; a fast retry and the test's clock for the gate. The replica owns every
        partition from the committed offsets on."""
        settings = self.settings
        self._client = build_client(settings)
        await self._client.__aenter__()
        self._running = self.service.assemble(self._client)
        parts, account = self.parts, self.account
        account.deliverer = Deliverer(
            self._client, governor=Governor({}), retry=RetryPolicy(0.01, max_attempts=3),
            same_person=account.processor.identity.same_person,
            max_in_flight=settings.klaviyo_max_in_flight,
            confirm_rounds=settings.deletion_confirm_rounds,
            stale_subscribe_seconds=settings.stale_subscribe_seconds,
        )  # fmt: skip
        account.gate = Gate(
            account.sender.add, erasure=account.processor.erasure, fence=account.fence,
            settle_seconds=settings.deletion_settle_seconds, clock=self.clock,
        )  # fmt: skip
        erasure = account.processor.erasure
        assert erasure is not None
        erasure.load()
        parts.ledger.assign([(TOPIC, p) for p in range(self.topic.partitions)])
        self.positions = {p: self.topic.committed.get(p, 0) for p in range(self.topic.partitions)}
        self.beat()

    # the loop's steps ---------------------------------------------------------------------

    async def fetch(self, partition: int, count: int) -> list[Message]:
        """The fetch loop's turn for `count` records of one partition."""
        running = self.running
        ledger, housekeeping = running.parts.ledger, running.housekeeping
        start = self.positions[partition]
        messages = self.topic.read(partition, start, count)
        self.positions[partition] = start + len(messages)
        records = ledger.begin(messages, ledger.stamp(messages))
        fresh = ledger.newly_assigned(records) if records else []
        if fresh:
            housekeeping.refresh_erasures()
            housekeeping.quiet(fresh)
        await running.handler.handle(records)
        self.account.gate.poll()
        return messages

    def lanes(self) -> dict[str, Lane | ActionLane]:
        return {str(kind): lane for kind, lane in self.account.sender.lanes.items()}

    def send(self, kind: str) -> bool:
        """The send stage takes one batch of `kind` and delivers it (a task: it may stay on
        the wire); False when the lane had none."""
        lane = self.lanes()[kind]
        batch = lane.take()
        if batch is None:
            return False
        self._spawn(self._deliver(lane, batch))
        return True

    async def _deliver(self, lane: Lane | ActionLane, batch: Batch | ActionBatch) -> None:
        try:
            await self.running.outcomes[self.account.name].deliver(batch)
        finally:
            lane.done(batch)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.running.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def beat(self) -> None:
        """One heartbeat: the group's deletions read, this replica's mark published, the gate
        polled."""
        account = self.account
        assert account.fence is not None
        self.running.housekeeping.refresh_erasures()
        account.fence.heartbeat()
        account.gate.poll()

    def commit(self) -> None:
        """Delivered message ids written, stored offsets committed."""
        self.running.housekeeping.flush_dedup(due_only=False)
        self.topic.committed.update(self.stored)

    def revoke(self, partition: int) -> None:
        """The partition is revoked (its offsets committed) and assigned again: a new
        generation reads from the committed offset."""
        ledger = self.parts.ledger
        tp = (TOPIC, partition)
        ledger.revoke([tp])
        self.commit()
        ledger.assign([tp])
        self.positions[partition] = self.topic.committed.get(partition, 0)

    def busy(self) -> list[asyncio.Task[Any]]:
        """Unfinished work of this replica: deliveries, records processed again, dead letters."""
        if self._running is None:
            return [t for t in self.tasks if not t.done()]
        again = self.running.handler._tasks
        writes = self.parts.ledger._writes
        return [t for t in (*self.tasks, *again, *writes) if not t.done()]

    def idle(self) -> bool:
        """Nothing left to do here: every record finished, no lane or gate holds anything."""
        parts = self.parts
        lanes = self.lanes().values()
        return (
            parts.ledger.pending == 0
            and not self.busy()
            and not self.account.gate.waiting()
            and all(lane.items == 0 and lane.parked == 0 for lane in lanes)
        )

    def crash(self) -> None:
        """The process dies: its in-flight requests are cut (those the sandbox already holds
        still land), nothing of it runs again; its published mark stays."""
        self.dead = True
        self.letters.dead = True
        for task in self.busy():
            task.cancel()

    async def close(self) -> None:
        for task in self.busy():
            task.cancel()
        await asyncio.gather(*self.busy(), return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
        self.store.close()


async def settle(
    replicas: list[Replica], wire: Wire, server: SandboxServer, until: float = STEP_TIMEOUT
) -> None:
    """Run the loop until every task of every replica is done or waiting on the wire, and the
    sandbox has applied the deletions and merges due (they run on the loop's next turns)."""
    deadline = time.monotonic() + until
    store = server.store
    while True:
        busy = [t for r in replicas for t in r.busy()]
        pending = [t for t in store.deletion_tasks if t.status == PENDING] + [
            t for t in store.merge_tasks if t.status == PENDING
        ]
        if len(busy) <= wire.waiting and not pending:
            await asyncio.sleep(0)  # a released request may still be on its way in
            busy = [t for r in replicas for t in r.busy()]
            if len(busy) <= wire.waiting:
                return
        if time.monotonic() > deadline:
            where = [_waits_at(t) for t in busy]
            raise AssertionError(
                f"the pipeline did not settle: {len(busy)} tasks busy, {wire.waiting} requests"
                f" held for them; they wait at {where}; Klaviyo tasks pending: {pending}"
            )
        if busy:
            await asyncio.wait(busy, timeout=0.005)
        else:
            await asyncio.sleep(0.001)  # the sandbox's scheduler: deletions and merges due


def _waits_at(task: asyncio.Task[Any]) -> str:
    """Where a task waits: the innermost coroutines of its await chain."""
    coro: Any = task.get_coro()
    chain: list[str] = []
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        code = coro.cr_frame.f_code
        chain.append(f"{code.co_name} ({Path(code.co_filename).name}:{coro.cr_frame.f_lineno})")
        coro = coro.cr_await
    return " < ".join(reversed(chain[-3:])) or repr(task)


async def run_dry(
    replica: Replica, replicas: list[Replica], wire: Wire, server: SandboxServer, clock: Clock
) -> None:
    """Send everything the replica has, have Klaviyo apply what it took, let settle and quiet
    times pass, until the replica is idle (every record it read finished)."""
    settings = replica.settings
    for _round in range(30):
        replica.beat()
        for kind in KINDS:
            while replica.send(kind):
                await settle(replicas, wire, server)
        server.sandbox.job_queue.flush()
        await settle(replicas, wire, server)
        if replica.idle():
            return
        clock.advance(settings.deletion_settle_seconds + settings.revoke_drain_seconds
                      + settings.klaviyo_timeout_seconds)  # fmt: skip
    raise AssertionError("the pipeline never became quiescent")


@asynccontextmanager
async def one_replica(
    tmp_path: Path, partitions: int = 1, config: SandboxConfig | None = None, **extra: Any
) -> AsyncIterator[tuple[Replica, SandboxServer, list[Letter]]]:
    """One replica over SQLite in `tmp_path` against a sandbox (by default: no rate limits,
    deletions at once, jobs applied when a step flushes them), with its dead letters; closed
    on exit. `extra`: settings."""
    config = config or SandboxConfig(
        rate_limits=False, deletion_delay_seconds=0, job_delay_seconds=3600
    )
    async with SandboxServer(config) as server:
        settings = lifecycle_settings(server.url, f"sqlite:///{tmp_path}/state.db", **extra)
        letters: list[Letter] = []
        replica = Replica(settings, Topic(partitions), Clock(), letters)
        await replica.start()
        try:
            yield replica, server, letters
        finally:
            await replica.close()


async def drain(replica: Replica, server: SandboxServer) -> None:
    """`run_dry` for a replica alone, nothing kept on the wire."""
    await run_dry(replica, [replica], Wire(), server, replica.clock)


def state_url_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh state store of `backend` ("sqlite" or "redis") for one test."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("clean_redis_url"))


def lifecycle_settings(sandbox_url: str, state_url: str, **extra: Any) -> Settings:
    """Settings of a replica stepped by hand against the sandbox (no rate governor: the
    sandbox has no limits; the broker is never dialled)."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": "127.0.0.1:1", "kafka_topics": (TOPIC,),
        "klaviyo_base_url": sandbox_url, "klaviyo_api_key": SecretStr(SANDBOX_API_KEY),
        "state_url": state_url, "metrics_port": 0, "klaviyo_rate_governor": False,
    }  # fmt: skip
    return Settings(**{**values, **extra})


def call(call_type: str, message_id: str, at: float, **fields: Any) -> dict[str, Any]:
    """A Segment call at Unix time `at`."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return {"type": call_type, "messageId": message_id, "timestamp": stamp, **fields}
