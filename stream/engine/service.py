"""`klaviyo-stream run`: one consumer-group member's fetch loop, and its start and stop.

`Service.run` assembles the run's parts (`stream.engine.parts`), then fetches and hands each
fetch to the per-record stages (`stream.engine.handle`); the send stage delivers batches
through `stream.engine.outcomes`, and the completion ledger (`stream.completion.ledger`)
decides what finishing a record means. Housekeeping runs beside it
(`stream.engine.housekeeping`).

On SIGTERM/SIGINT: stop fetching, send what is batched, wait for in-flight requests and
dead-letter writes, commit, leave the group, exit 0: all of it within `shutdown_timeout`. A
refused API key or revision stops the service without committing past the records it could
not send.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from stream.catalog.stage import CatalogStage
from stream.completion.dedup import Deduplicator
from stream.completion.ledger import DeadLetterWriter, Ledger
from stream.core.calls import Record
from stream.core.clients import require_klaviyo_credentials
from stream.core.errors import Interrupted
from stream.core.retry import until_available
from stream.core.settings import Settings
from stream.delivery.actions import ActionBatch
from stream.delivery.batch import Batch
from stream.delivery.deliver import Deliverer
from stream.delivery.send import Sender
from stream.engine.gate import Gate
from stream.engine.handle import Handler
from stream.engine.housekeeping import Housekeeping
from stream.engine.outcomes import Outcomes
from stream.engine.parts import STATE, Parts, RunResult, Stop
from stream.engine.pipeline import (
    build_catalog,
    build_client,
    build_dead_letters,
    build_governor,
    build_processor,
    identity_limits,
)
from stream.identity.fence import Fence
from stream.intake.consume import KafkaConsumer
from stream.intake.decode import Decoder, make_decoder
from stream.intake.source import Drain, Partitions, Source, SourceFactory
from stream.klaviyo.client import KlaviyoClient
from stream.rules.transform import transformer_from_settings
from stream.state import StateStore, open_store
from stream.telemetry import metrics
from stream.telemetry.health import Health

log = logging.getLogger(__name__)

FETCH_MAX = 1000
FETCH_TIMEOUT = 0.1
SHUTDOWN_RESERVE_SECONDS = 5.0  # of the shutdown timeout, kept for the commit and the close
GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)

__all__ = ["RunResult", "Running", "Service", "install_signal_handlers", "tune_gc"]


def tune_gc() -> None:
    """Fewer, larger garbage collections: the hot path allocates a few dicts per record, and
    with CPython's default threshold (700) collections took about a quarter of the per-record
    time in a stage micro-benchmark. Startup objects are frozen out of every later collection.
    Once per process: later services in one process (tests) find it done."""
    if gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD:
        return
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@dataclass(eq=False)
class Running:
    """One run: its parts and the stages working on them."""

    parts: Parts
    handler: Handler
    outcomes: Outcomes
    housekeeping: Housekeeping
    loop: asyncio.AbstractEventLoop  # the loop it runs on (rebalances call into it)


class Service:
    """One consumer-group member; `run()` until `stop()`.

    `source` makes the Kafka side (default: `KafkaConsumer`), `dead_letters` writes dead
    letters (default: the dead-letter topic): tests run the service in-process with in-memory
    ones."""

    def __init__(
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        decoder: Decoder | None = None,
        store: StateStore | None = None,
        shutdown_timeout: float | None = None,
        source: SourceFactory | None = None,
        dead_letters: DeadLetterWriter | None = None,
    ) -> None:
        self.settings = settings
        self.health = health or Health(
            stall_after_seconds=settings.ready_stall_seconds,
            partitions_required=not settings.ready_without_partitions,
        )
        self.result = RunResult()
        self._decoder = decoder or make_decoder(settings)
        self._store = store or open_store(
            settings.state_url,
            settings.dedup_window_seconds,
            settings.held_lease_seconds,
            identity_limits(settings),
        )
        self._dedup = Deduplicator(self._store)
        self._transformer = transformer_from_settings(settings)  # rules and HIPAA, checked now
        self._processor = build_processor(settings, self._store, self._transformer)
        erasure = self._processor.erasure
        self._fence = None if erasure is None else Fence(
            self._store, erasure,
            request_timeout=settings.klaviyo_timeout_seconds,
            liveness=settings.replica_liveness_seconds,
        )  # fmt: skip
        if self._fence is not None:
            self._store.lease_owner = self._fence.replica  # released held calls follow us
        self._stop = Stop()
        self._shutdown_timeout = (
            settings.shutdown_timeout_seconds if shutdown_timeout is None else shutdown_timeout
        )
        self._source = source or self._kafka
        self._dead_letters = dead_letters
        self.running: Running | None = None  # while `run` runs

    def stop(self) -> None:
        """Ask the loop to finish (signal-safe)."""
        self._stop.ask()

    @property
    def pending(self) -> int:
        """Records begun and not yet finished, catalog topics' too (0 when not running)."""
        return self.running.parts.ledger.pending if self.running is not None else 0

    def sweep_once(self, now: float, with_stats: bool = True) -> int:
        """One housekeeping sweep now (see `Housekeeping.sweep_once`); needs a running run."""
        assert self.running is not None, "the service is not running"
        return self.running.housekeeping.sweep_once(now, with_stats)

    def _kafka(self, ledger: Ledger, drain: Drain) -> Source:
        return KafkaConsumer(self.settings, ledger, drain)

    # assembling -------------------------------------------------------------------------------

    def assemble(self, client: KlaviyoClient) -> Running:
        """The parts of one run over `client`, wired together (nothing started yet); on the
        event loop the run will use."""
        settings = self.settings
        dead_letters = self._dead_letters or build_dead_letters(
            settings, self._decoder, self._transformer
        )
        ledger = Ledger(self._dedup, dead_letters, self._store_offset)
        governor = build_governor(settings)
        client_mode = settings.klaviyo_mode == "client"
        deliverer = Deliverer(
            client,
            max_in_flight=settings.klaviyo_max_in_flight,
            client_mode=client_mode,
            governor=governor,
            same_person=self._processor.identity.same_person,
            confirm_rounds=settings.deletion_confirm_rounds,
            stale_subscribe_seconds=settings.stale_subscribe_seconds,
        )

        async def deliver(batch: Batch | ActionBatch) -> None:
            await outcomes.deliver(batch)  # made below, once the gate is

        sender = Sender(
            governor,
            deliver,
            max_events=settings.batch_max_events,
            max_profiles=settings.batch_max_profiles,
            linger_seconds=settings.batch_linger_ms / 1000,
            max_in_flight=settings.klaviyo_max_in_flight,
            client_mode=client_mode,
        )
        # consent, list and deletion actions reach the send stage through the gate: in order
        # per person, each after what it follows (`stream.engine.gate`)
        gate = Gate(
            sender.add,
            erasure=self._processor.erasure,
            fence=self._fence,
            settle_seconds=settings.deletion_settle_seconds,
            stop=self._stop.asked,
        )
        catalog = build_catalog(
            settings, self._store, client, ledger, governor,
            fatal=self._stop.fail, waiting=self.health.waiting,
        )  # fmt: skip
        parts = Parts(
            settings=settings,
            health=self.health,
            stop=self._stop,
            result=self.result,
            store=self._store,
            dedup=self._dedup,
            decoder=self._decoder,
            processor=self._processor,
            fence=self._fence,
            ledger=ledger,
            source=self._source(ledger, self._drain),
            dead_letters=dead_letters,
            deliverer=deliverer,
            governor=governor,
            sender=sender,
            gate=gate,
            catalog=catalog,
        )
        handler = Handler(parts)
        outcomes = Outcomes(parts, handler.again_soon)
        loop = asyncio.get_running_loop()
        self.running = Running(parts, handler, outcomes, Housekeeping(parts), loop)
        return self.running

    # running ----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Consume until stopped; returns counts. Raises on a fatal delivery or config error."""
        require_klaviyo_credentials(self.settings)
        tune_gc()
        async with build_client(self.settings) as client, self.started(client) as running:
            await self._fetch_loop(running)
        if self._stop.fatal is not None:
            raise self._stop.fatal
        return self.result

    @asynccontextmanager
    async def started(self, client: KlaviyoClient) -> AsyncIterator[Running]:
        """A run assembled and started (send stage, catalog, the group's deletions loaded,
        heartbeat, sweep); shut down on exit within `shutdown_timeout`, the state store
        closed. A stop while the deletions load (the state store down) leaves nothing to do."""
        running = self.assemble(client)
        parts = running.parts
        parts.sender.start()
        if parts.catalog is not None:
            parts.catalog.start()
        metrics.RATE_SHARE.set(parts.governor.share)
        housekeeping = running.housekeeping
        tasks: list[asyncio.Task[None]] = []
        try:
            if await self._load_erasures():
                tasks = [
                    asyncio.create_task(housekeeping.sweep(time.time)),
                    asyncio.create_task(housekeeping.heartbeat()),
                ]
            yield running
        finally:
            for task in tasks:
                task.cancel()
            await self._shutdown(running)
            self._store.close()
            self.result.dead_lettered = parts.ledger.dead_lettered

    async def _load_erasures(self) -> bool:
        """The group's tombstones and erasures, before any record is judged (False: stopped
        while the state store was down)."""
        erasure = self._processor.erasure
        if erasure is None:
            return True
        try:
            await until_available(
                erasure.load, STATE, waiting=self.health.waiting, stop=self._stop.asked
            )
        except Interrupted:
            return False
        return True

    async def _fetch_loop(self, running: Running) -> None:
        """Fetch and handle until stopped. The next fetch runs on the consume thread while this
        batch is handled (librdkafka releases the GIL), so the broker and the pipeline overlap.
        Records a last fetch returned after the stop are not begun: their offsets are never
        stored, the group's next owner reads them again."""
        parts, handler, housekeeping = running.parts, running.handler, running.housekeeping
        source, ledger, sender, catalog = parts.source, parts.ledger, parts.sender, parts.catalog
        stop = self._stop
        max_pending = self.settings.max_pending_records
        fetching = None
        while not stop.stopping and stop.fatal is None:
            pending = parts.pending
            if pending >= max_pending:
                source.pause()
            elif source.paused and pending < max_pending // 2:
                source.resume()
            if catalog is not None:  # catalog records have a bound of their own
                if catalog.pending >= catalog.max_pending:
                    source.pause_catalog(True)
                elif source.catalog_paused and catalog.pending < catalog.max_pending // 2:
                    source.pause_catalog(False)
            if fetching is None:  # fetch even when paused: callbacks run inside the fetch
                room = max(1, self._room(parts))
                fetching = asyncio.create_task(source.fetch(room, FETCH_TIMEOUT))
            messages, stamps = await fetching
            fetching = None
            self.health.polled()
            self.health.broker_reachable = source.broker_reachable
            self.health.assigned_partitions = len(source.assigned)
            records = ledger.begin(messages, stamps)
            fresh = ledger.newly_assigned(records) if records else []
            if fresh:
                housekeeping.refresh_erasures()  # a new assignment's records meet today's deletions
                housekeeping.quiet(fresh)
            room = self._room(parts)
            if room > 0 and not source.paused and not stop.stopping:
                fetching = asyncio.create_task(source.fetch(room, FETCH_TIMEOUT))
            self._count(records)
            try:
                if catalog is not None:
                    records = await self._to_catalog(catalog, records)
                await handler.handle(records)
            except Interrupted:
                break  # stopped during a dependency wait: what it held is read again next run
            parts.gate.poll()  # deletions whose earlier records finished meanwhile
            housekeeping.flush_dedup(due_only=True)
            metrics.PENDING_RECORDS.set(ledger.pending)
            for kind, lane in sender.lanes.items():
                metrics.ITEMS_WAITING.labels(kind).set(lane.items + lane.parked)
        if fetching is not None:
            await fetching  # let the consume thread finish; its records are not begun

    def _room(self, parts: Parts) -> int:
        """How many records a fetch may return: pending never exceeds MAX_PENDING_RECORDS."""
        return min(FETCH_MAX, self.settings.max_pending_records - parts.pending)

    async def _to_catalog(self, catalog: CatalogStage, records: list[Record]) -> list[Record]:
        """Hand the records of catalog topics to the catalog stage; the others go on."""
        topics = self.settings.catalog_topics
        mine = [r for r in records if r.topic in topics]
        if not mine:
            return records
        await catalog.accept(mine)
        return [r for r in records if r.topic not in topics]

    def _count(self, records: list[Record]) -> None:
        self.result.consumed += len(records)
        for (topic, partition), count in Counter((r.topic, r.partition) for r in records).items():
            metrics.RECORDS_CONSUMED.labels(topic, str(partition)).inc(count)

    # rebalances (the fetching thread) ---------------------------------------------------------

    def _store_offset(self, topic: str, partition: int, next_offset: int) -> None:
        if self.running is not None:
            self.running.parts.source.store(topic, partition, next_offset)

    def _drain(self, partitions: Partitions) -> None:
        """Revoked partitions: let their in-flight work finish (bounded) before the commit."""
        running = self.running
        if running is None or self._stop.fatal is not None:
            return
        parts, loop = running.parts, running.loop
        ledger = parts.ledger
        if ledger.unfinished(partitions) == 0:
            return
        loop.call_soon_threadsafe(parts.sender.hurry)
        if parts.catalog is not None:
            loop.call_soon_threadsafe(parts.catalog.hurry)
        drained = ledger.wait_drained(partitions, self.settings.revoke_drain_seconds)
        log.info(
            "revoked partitions drained" if drained else "revoked with work in flight",
            extra={"partitions": len(partitions), "left": ledger.unfinished(partitions)},
        )

    # shutdown ---------------------------------------------------------------------------------

    async def _shutdown(self, running: Running) -> None:
        """Within `shutdown_timeout` in all: finish what is out (Klaviyo's answers, dead-letter
        writes), keeping a few seconds of it for the commit and leaving the group."""
        parts = running.parts
        source, ledger, sender, catalog = parts.source, parts.ledger, parts.sender, parts.catalog
        self.health.stopping = True
        deadline = time.monotonic() + self._shutdown_timeout
        reserve = min(SHUTDOWN_RESERVE_SECONDS, self._shutdown_timeout / 2)

        def left(keep: float = 0.0) -> float:
            return max(0.0, deadline - keep - time.monotonic())

        if self._stop.fatal is None:
            await sender.close(timeout=left(reserve))
            if catalog is not None:  # jobs still out stay in the state store for next time
                await catalog.close(timeout=left(reserve))
            await ledger.close(timeout=left(reserve))
        else:  # nothing more can be sent: what is out stays unfinished, read again later
            await sender.close(timeout=0)
            if catalog is not None:
                await catalog.close(timeout=0)
            await ledger.close(timeout=min(5, left(reserve)))
        housekeeping = running.housekeeping
        housekeeping.flush_dedup(due_only=False)
        housekeeping.settle_held()
        if self._fence is not None:  # gone: deletions stop waiting for us, now
            housekeeping.guarded(self._fence.retire)
        source.closing = True
        await source.commit()
        await source.close()
        parts.dead_letters.close(timeout=left())


def install_signal_handlers(service: Service) -> None:
    """SIGTERM and SIGINT stop the service gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
