"""`klaviyo-stream run`: one consumer-group member's fetch loop, housekeeping and shutdown.

The loop fetches, decodes, routes, deduplicates and processes each record, and hands the items
to the send stage; the completion ledger (`stream.completion.ledger`) decides what finishing a
record means. No exception from one record leaves the per-record stage: bad input and anything
unexpected become a dead letter with the reason, and the loop goes on. A dependency that fails
(state store, Schema Registry) makes the loop wait and try again; it neither stops nor loses,
and a stop signal ends the wait (the records it held are read again by the next run).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from stream.catalog.stage import CatalogStage
from stream.completion.deadletter import DeadLetters
from stream.completion.dedup import Deduplicator
from stream.completion.ledger import Generation, Ledger, Outcome, ended
from stream.core.calls import Call, Record, routing_call
from stream.core.errors import (
    ConfigError,
    FatalDeliveryError,
    InternalError,
    Interrupted,
    RecordError,
    StateError,
    StreamError,
    Unavailable,
)
from stream.core.retry import until_available
from stream.core.settings import Settings, require_klaviyo_credentials
from stream.delivery.actions import ActionBatch
from stream.delivery.batch import Batch, Sendable
from stream.delivery.deliver import Deliverer
from stream.delivery.send import Sender
from stream.engine.gate import Gate
from stream.engine.pipeline import (
    build_catalog,
    build_client,
    build_dead_letters,
    build_governor,
    build_processor,
    identity_limits,
)
from stream.engine.process import Result
from stream.identity.erasure import profile_identifiers
from stream.identity.fence import HEARTBEAT_SECONDS, Fence
from stream.identity.resolver import Held
from stream.intake.consume import KafkaConsumer, Partitions
from stream.intake.decode import Decoder, Peeked, make_decoder
from stream.klaviyo.governor import Governor
from stream.klaviyo.mapping import anonymous_profile
from stream.rules.transform import transformer_from_settings
from stream.state import HeldEntry, StateStore, open_store
from stream.telemetry import metrics
from stream.telemetry.health import Health

log = logging.getLogger(__name__)

FETCH_MAX = 1000
FETCH_TIMEOUT = 0.1
YIELD_EVERY = 100  # records processed between two turns of the event loop (governor timing)
SWEEP_SECONDS = 5.0
STATS_EVERY = 12  # state-store sizes once a minute: counting Redis keys scans them
SHARE_EVERY = 6  # KLAVIYO_RATE_SHARE=auto asks the group's size every 30 s
SHUTDOWN_RESERVE_SECONDS = 5.0  # of the shutdown timeout, kept for the commit and the close
GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)
STATE = "state store"
MAX_ROUTES = 10_000  # peeked (type, name, integrations) → routing answer, remembered
MAX_ROUTE_KEY = 1024  # characters of name + integrations beyond which nothing is remembered
_UNKNOWN = object()
QUIET = ("deletion", "confirm")  # batches that never make a profile: not on the fence's wire
T = TypeVar("T")


@dataclass
class RunResult:
    """What a run did, for the CLI's last line and for tests."""

    consumed: int = 0
    dead_lettered: int = 0


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


class Service:
    """One consumer-group member; `run()` until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        decoder: Decoder | None = None,
        store: StateStore | None = None,
        shutdown_timeout: float | None = None,
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
        self._routes: dict[Peeked, str | None | bool] = {}
        self._stopping = asyncio.Event()
        self._shutdown_timeout = (
            settings.shutdown_timeout_seconds if shutdown_timeout is None else shutdown_timeout
        )
        self._fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: KafkaConsumer | None = None
        self._dead_letters: DeadLetters | None = None
        self._ledger: Ledger | None = None
        self._sender: Sender | None = None
        self._deliverer: Deliverer | None = None
        self._governor: Governor | None = None
        self._gate: Gate | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # records processed again
        self._catalog: CatalogStage | None = None  # CATALOG_TOPICS' records (`stream.catalog`)

    def stop(self) -> None:
        """Ask the loop to finish (signal-safe)."""
        self._stopping.set()

    # running ----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Consume until stopped; returns counts. Raises on a fatal delivery or config error."""
        settings = self.settings
        require_klaviyo_credentials(settings)
        tune_gc()
        self._loop = asyncio.get_running_loop()
        self._dead_letters = build_dead_letters(settings, self._decoder, self._transformer)
        ledger = self._ledger = Ledger(self._dedup, self._dead_letters, self._store_offset)
        self._consumer = KafkaConsumer(settings, ledger, self._drain)
        async with build_client(settings) as client:
            governor = build_governor(settings)
            self._deliverer = Deliverer(
                client,
                max_in_flight=settings.klaviyo_max_in_flight,
                client_mode=settings.klaviyo_mode == "client",
                governor=governor,
                same_person=self._processor.identity.same_person,
                confirm_rounds=settings.deletion_confirm_rounds,
                stale_subscribe_seconds=settings.stale_subscribe_seconds,
            )
            self._sender = Sender(
                governor,
                self._deliver,
                max_events=settings.batch_max_events,
                max_profiles=settings.batch_max_profiles,
                linger_seconds=settings.batch_linger_ms / 1000,
                max_in_flight=settings.klaviyo_max_in_flight,
                client_mode=settings.klaviyo_mode == "client",
            )
            self._sender.start()
            self._governor = governor
            self._catalog = build_catalog(
                settings, self._store, client, ledger, governor,
                fatal=self._stop_fatal, waiting=self.health.waiting,
            )  # fmt: skip
            if self._catalog is not None:
                self._catalog.start()
            metrics.RATE_SHARE.set(governor.share)
            self._actions_gate()
            if self._processor.erasure is not None:
                erasure = self._processor.erasure
                await until_available(
                    erasure.load, STATE, waiting=self.health.waiting, stop=self._stopping
                )
            sweeper = asyncio.create_task(self._sweep())
            heart = asyncio.create_task(self._heartbeat())
            try:
                await self._fetch_loop(self._consumer, ledger, self._sender)
            finally:
                sweeper.cancel()
                heart.cancel()
                await self._shutdown(self._consumer, ledger, self._sender)
                self._store.close()
        self.result.dead_lettered = ledger.dead_lettered
        if self._fatal is not None:
            raise self._fatal
        return self.result

    async def _fetch_loop(self, consumer: KafkaConsumer, ledger: Ledger, sender: Sender) -> None:
        """Fetch and handle until stopped. The next fetch runs on the consume thread while this
        batch is handled (librdkafka releases the GIL), so the broker and the pipeline overlap.
        Records a last fetch returned after the stop are not begun: their offsets are never
        stored, the group's next owner reads them again."""
        max_pending = self.settings.max_pending_records
        catalog = self._catalog
        fetching = None
        while not self._stopping.is_set() and self._fatal is None:
            pending = self._pending()
            if pending >= max_pending:
                consumer.pause()
            elif consumer.paused and pending < max_pending // 2:
                consumer.resume()
            if catalog is not None:  # catalog records have a bound of their own
                if catalog.pending >= catalog.max_pending:
                    consumer.pause_catalog(True)
                elif consumer.catalog_paused and catalog.pending < catalog.max_pending // 2:
                    consumer.pause_catalog(False)
            if fetching is None:  # fetch even when paused: callbacks run inside the fetch
                room = max(1, self._room())
                fetching = asyncio.create_task(consumer.fetch(room, FETCH_TIMEOUT))
            messages, stamps = await fetching
            fetching = None
            self.health.polled()
            self.health.broker_reachable = consumer.broker_reachable
            self.health.assigned_partitions = len(consumer.assigned)
            records = ledger.begin(messages, stamps)
            fresh = ledger.newly_assigned(records) if records else []
            if fresh:
                self._refresh_erasures()  # a new assignment's records meet today's deletions
                self._quiet(fresh)
            room = self._room()
            if room > 0 and not consumer.paused and not self._stopping.is_set():
                fetching = asyncio.create_task(consumer.fetch(room, FETCH_TIMEOUT))
            self._count(records)
            try:
                if catalog is not None:
                    records = await self._to_catalog(catalog, records)
                await self._handle(records)
            except Interrupted:
                break  # stopped during a dependency wait: what it held is read again next run
            if self._gate is not None:
                self._gate.poll()  # deletions whose earlier records finished meanwhile
            self._flush_dedup(due_only=True)
            metrics.PENDING_RECORDS.set(ledger.pending)
            for kind, lane in sender.lanes.items():
                metrics.ITEMS_WAITING.labels(kind).set(lane.items + lane.parked)
        if fetching is not None:
            await fetching  # let the consume thread finish; its records are not begun

    def _room(self) -> int:
        """How many records a fetch may return: pending never exceeds MAX_PENDING_RECORDS."""
        return min(FETCH_MAX, self.settings.max_pending_records - self._pending())

    def _pending(self) -> int:
        """Records of the event path begun and not finished (the catalog's are its own)."""
        assert self._ledger is not None
        catalog = self._catalog.pending if self._catalog is not None else 0
        return self._ledger.pending - catalog

    async def _to_catalog(self, catalog: CatalogStage, records: list[Record]) -> list[Record]:
        """Hand the records of catalog topics to the catalog stage; the others go on."""
        topics = self.settings.catalog_topics
        mine = [r for r in records if r.topic in topics]
        if not mine:
            return records
        await catalog.accept(mine)
        return [r for r in records if r.topic not in topics]

    def _stop_fatal(self, exc: BaseException) -> None:
        """A stage met an error no record can get past (the API key): stop, commit nothing
        past what it could not send."""
        if self._fatal is None:
            log.error("stopping", extra={"error": str(exc)})
            self._fatal = exc
        self._stopping.set()

    def _count(self, records: list[Record]) -> None:
        self.result.consumed += len(records)
        for (topic, partition), count in Counter((r.topic, r.partition) for r in records).items():
            metrics.RECORDS_CONSUMED.labels(topic, str(partition)).inc(count)

    # the per-record stages --------------------------------------------------------------------

    async def _handle(self, records: list[Record]) -> None:
        """decode → route → dedup (one store round trip per fetch) → process → send."""
        ledger, sender = self._ledger, self._sender
        assert ledger is not None and sender is not None
        self._actions_gate()
        decoder, processor = self._decoder, self._processor
        waiting, stop = self.health.waiting, self._stopping
        await until_available(
            lambda: decoder.prepare(records), "schema registry", waiting=waiting, stop=stop
        )
        routed: list[tuple[Call, Record]] = []
        types: Counter[str] = Counter()
        # With event definitions most records may be for others: route on a peek at the few
        # fields routing reads (`Decoder.peek`), decode in full only what goes on, and finish
        # what is filtered together, counted once per fetch.
        peek = decoder.peek if processor.router.definitions is not None else None
        routes = self._routes
        filtered: list[_Finished] = []
        reasons: Counter[tuple[str, str]] = Counter()
        for record in records:
            try:
                peeked = peek(record.value, record.headers) if peek is not None else None
                routed_on = False  # the peek said: for Klaviyo
                if peeked is not None:
                    reason = routes.get(peeked, _UNKNOWN)
                    if reason is _UNKNOWN:
                        reason = self._route(peeked)
                    if isinstance(reason, str):
                        types[peeked[0]] += 1
                        reasons[peeked[0], reason] += 1
                        filtered.append(_Finished([record]))
                        continue
                    routed_on = reason is None
                call = decoder.decode(record.value, record.headers)
                types[call.type] += 1
                record.message_id = call.message_id
                if not routed_on and processor.skip(call) is not None:
                    ledger.processed(record, Outcome.FILTERED)
                    continue
            except (ConfigError, FatalDeliveryError):
                raise
            except RecordError as exc:
                ledger.reject(record, exc, exc.stage)
                continue
            except Exception as exc:  # the per-record barrier: a record built to hurt
                ledger.reject(record, _internal(exc), "decode")
                continue
            routed.append((call, record))
        for call_type, count in types.items():
            metrics.RECORDS_DECODED.labels(call_type).inc(count)
        for (call_type, why), count in reasons.items():
            metrics.RECORDS_FILTERED.labels(call_type, why).inc(count)
        if filtered:
            ledger.settle(filtered, Outcome.FILTERED)
        fresh = await until_available(
            lambda: self._dedup.fresh([r for _, r in routed]), STATE, waiting=waiting, stop=stop
        )
        for n, ((call, record), new) in enumerate(zip(routed, fresh, strict=True)):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let paced requests and their answers go meanwhile
            if new is not True:
                record.message_id = None  # not ours to remember: the first copy's
                if new is False:
                    ledger.processed(record, Outcome.DUPLICATE)
                else:
                    ledger.wait_for(record, new)
                continue
            try:  # the usual case: no retry wrapper (a coroutine and a lambda) per record
                result = self._barrier(call, record)
            except Unavailable as exc:  # a dependency failed: wait it out, this failure first
                result = await self._process(call, record, exc)
            if result is not None:
                self._dispatch(record, result)

    def _quiet(self, generations: list[Generation]) -> None:
        """A partition just given to this replica: if another replica was alive (it may have
        owned it), its consent and deletion actions wait until that owner's last requests can
        no longer land (cut off at the drain bound, on the wire for at most the timeout)."""
        if self._fence is None or not self._fence.others:
            return
        settings = self.settings
        wait = settings.revoke_drain_seconds + settings.klaviyo_timeout_seconds
        for gen in generations:
            gen.quiet_until = gen.assigned_at + wait

    def _dispatch(self, record: Record, result: Result) -> None:
        """Hand a processed record's items to the send stage, its actions to the gate (all of
        them to the gate's hold while a deletion it names is under way), its failures to the
        ledger; then the record is processed."""
        ledger, sender, gate = self._ledger, self._sender, self._actions_gate()
        assert ledger is not None and sender is not None
        for item in result.released:
            ledger.adopt(item.records[0])
            sender.add(item)
        waits = result.after_erasures  # a deletion it names is in flight: all wait for it
        gen = record.generation
        quiet = gen.quiet_until if isinstance(gen, Generation) else 0.0
        for action in result.actions:  # before the record's items: list changes count them
            record.open += 1
            if quiet > action.ready_at:
                action.ready_at = quiet
            if not waits:
                gate.put(action)
        for item in result.items:
            record.open += 1
            if not waits:
                sender.add(item)
        if waits:
            gate.hold(waits, result.items, result.actions)
        for failure in result.failures:  # a bad order line: a dead letter of its own
            record.open += 1
            ledger.fail([failure], failure.error, failure.error.stage)
        ledger.processed(record, result.outcome)

    async def _again(self, record: Record) -> None:
        """Process a record anew (it raced a deletion: see `_admit`); its token is open."""
        decoder = self._decoder
        try:
            await until_available(
                lambda: decoder.prepare([record]), "schema registry",
                waiting=self.health.waiting, stop=self._stopping,
            )  # fmt: skip
            call = decoder.decode(record.value, record.headers)
            result = await self._process(call, record)
        except RecordError as exc:
            self._ledger.reject(record, exc, exc.stage)  # type: ignore[union-attr]
            return
        except Interrupted:
            return  # stopping: the record stays unfinished, read again by the next owner
        if result is not None:
            self._dispatch(record, result)

    def _actions_gate(self) -> Gate:
        """Consent, list and deletion actions go to the send stage through this gate: in order
        per person, each after what it follows (`stream.engine.gate`)."""
        if self._gate is None:
            assert self._sender is not None and self._ledger is not None
            self._gate = Gate(
                self._sender.add,
                erasure=self._processor.erasure,
                fence=self._fence,
                settle_seconds=self.settings.deletion_settle_seconds,
                stop=self._stopping,
            )
        return self._gate

    def _route(self, peeked: Peeked) -> str | None | bool:
        """Why a peeked call is not for Klaviyo (a reason), None when it goes on, or False when
        only a full decode can tell (malformed integrations; consent or lists it may ask).
        Remembered for the few distinct (type, name, integrations) a topic carries; odd input
        never grows the memo."""
        call = routing_call(*peeked)
        answer = False if call is None else self._processor.router.reason_to_skip(call)
        consent = self._processor.consent
        if call is not None and answer not in (None, "integrations") and consent.may_ask(call):
            answer = False  # not sent itself, but the consent and list changes it asks are
        name, integrations = peeked[1] or "", peeked[2] or ""
        if len(self._routes) < MAX_ROUTES and len(name) + len(integrations) <= MAX_ROUTE_KEY:
            self._routes[peeked] = answer
        return answer

    async def _process(
        self, call: Call, record: Record, failed: Unavailable | None = None
    ) -> Result | None:
        """One call through transform → identity → map, behind the per-record barrier: a
        dependency failure (`failed`: the first one, already seen) waits and tries again (the
        store's steps are atomic), anything else dead-letters the record (None)."""
        first = [failed] if failed is not None else []

        def attempt() -> Result | None:
            if first:
                raise first.pop()
            return self._barrier(call, record)

        return await until_available(
            attempt, STATE, waiting=self.health.waiting, stop=self._stopping
        )

    def _barrier(self, call: Call, record: Record) -> Result | None:
        assert self._ledger is not None
        try:
            return self._processor.process(call, record)
        except (Unavailable, ConfigError, FatalDeliveryError):
            raise
        except RecordError as exc:
            self._ledger.reject(record, exc, exc.stage)
        except Exception as exc:  # the per-record barrier
            self._ledger.reject(record, _internal(exc), "process")
        return None

    async def _deliver(self, batch: Batch | ActionBatch) -> None:
        """Send one batch (the send stage calls this, as it takes it) and give its outcomes to
        the ledger. Work stamped before a deletion learnt of since is judged again first
        (`_admit`); from then until answered the batch is on the wire (`Fence`)."""
        assert self._deliverer is not None and self._ledger is not None
        erasure = self._processor.erasure
        mark = erasure.mark if erasure is not None else 0  # what `_admit` judges against
        try:
            admitted = await self._admit(batch, mark)
        except Interrupted:
            return  # stopping with the state store down: its records stay unfinished
        if admitted is None:
            return
        batch = admitted
        fence = self._fence
        token = fence.sending(mark) if fence is not None and batch.kind not in QUIET else None
        try:
            settlement = await self._deliverer.send(batch)
        except (FatalDeliveryError, ConfigError) as exc:
            if self._fatal is None:
                log.error("stopping", extra={"error": str(exc)})
                self._fatal = exc
            self._stopping.set()
            return  # its records stay unfinished: read again once the cause is fixed
        except Exception as exc:
            log.exception("delivery failed unexpectedly")
            if self._gate is not None:
                await self._gate.answered(batch.items, batch.items)
            self._ledger.fail(batch.items, _internal(exc), "deliver")
            return
        finally:
            if token is not None and fence is not None:
                fence.answered(token)
        if settlement.cancelled:
            self._cancel(settlement.cancelled)
        if self._gate is not None:  # erasures settled before their records finish
            failed = [item for failure in settlement.failed for item in failure.items]
            cancelled = {id(item) for item in settlement.cancelled}
            try:
                await self._gate.answered(
                    [i for i in batch.items if id(i) not in cancelled], failed
                )
            except Interrupted:
                return  # stopping with the state store down: its records stay unfinished
        self._ledger.settle(settlement.delivered)
        for failure in settlement.failed:
            self._ledger.fail(failure.items, failure.error, failure.stage)

    async def _admit(self, batch: Batch | ActionBatch, mark: int) -> Batch | ActionBatch | None:
        """The late check (`Erasure.late`): items whose records were judged before a deletion
        of what they name, up to tombstone mark `mark`, that this replica has read since.
        Records older than it finish filtered; newer ones are processed again once that erasure
        is done. The rest goes on (None: nothing is left to send)."""
        gone = [item for item in batch.items if ended(item)]
        if gone:  # its partition moved on past the drain bound: its next owner sends it
            self._cancel(gone)
            batch = batch.without(gone)
            if not batch.items:
                return None
        erasure = self._processor.erasure
        if erasure is None or batch.kind in QUIET or not batch.items:
            return batch
        if min(r.stamp for item in batch.items for r in item.records) >= mark:
            return batch  # the usual batch: nothing was deleted since its work began
        assert self._ledger is not None
        caught: list[Sendable] = []
        for item in batch.items:
            if all(r.stamp >= mark for r in item.records):
                continue
            judge = partial(erasure.late, item.records, profile_identifiers(item.profile), mark)
            verdict = await until_available(
                judge, STATE, waiting=self.health.waiting, stop=self._stopping
            )
            if verdict is None:
                continue
            caught.append(item)
            for record in verdict.newer:  # it raced the deletion: processed again after it
                record.open += 1
                waits = tuple(verdict.waits)
                self._actions_gate().hold_call(waits, partial(self._again_soon, record))
        if not caught:
            return batch
        if self._gate is not None and isinstance(batch, ActionBatch):
            await self._gate.answered(caught)
        self._ledger.settle(caught, Outcome.FILTERED)
        rest = batch.without(caught)
        return rest if rest.items else None

    def _cancel(self, items: Sequence[Sendable]) -> None:
        """Items of a revoked partition: nothing more is attempted here (counted)."""
        assert self._ledger is not None
        metrics.ITEMS_CANCELLED.labels(items[0].kind).inc(len(items))
        if self._gate is not None:
            self._gate.dropped(items)
        self._ledger.settle(items, Outcome.CANCELLED)

    def _again_soon(self, record: Record) -> None:
        task = asyncio.get_running_loop().create_task(self._again(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # rebalances (consume thread) --------------------------------------------------------------

    def _store_offset(self, topic: str, partition: int, next_offset: int) -> None:
        if self._consumer is not None:
            self._consumer.store(topic, partition, next_offset)

    def _drain(self, partitions: Partitions) -> None:
        """Revoked partitions: let their in-flight work finish (bounded) before the commit."""
        ledger, loop, sender = self._ledger, self._loop, self._sender
        if ledger is None or loop is None or sender is None or self._fatal is not None:
            return
        if ledger.unfinished(partitions) == 0:
            return
        loop.call_soon_threadsafe(sender.hurry)
        if self._catalog is not None:
            loop.call_soon_threadsafe(self._catalog.hurry)
        drained = ledger.wait_drained(partitions, self.settings.revoke_drain_seconds)
        log.info(
            "revoked partitions drained" if drained else "revoked with work in flight",
            extra={"partitions": len(partitions), "left": ledger.unfinished(partitions)},
        )

    # housekeeping -----------------------------------------------------------------------------

    def _flush_dedup(self, due_only: bool) -> None:
        """Write delivered message ids to the dedup store; a failure waits for the next turn
        (the ids stay in this process's in-flight map meanwhile)."""
        if due_only and not self._dedup.flush_due():
            return
        try:
            self._dedup.flush()
        except StateError as exc:
            metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
            log.warning("dedup store write failed, retrying", extra={"error": str(exc)[:500]})

    def _settle_held(self) -> None:
        """Delete the store entries of released held calls that finished."""
        assert self._ledger is not None
        done = self._ledger.take_finished_held()
        if not done:
            return
        try:
            self._store.settle_held(done)
        except StateError as exc:
            self._ledger.return_finished_held(done)
            metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
            log.warning("held entries not deleted, retrying", extra={"error": str(exc)[:500]})

    def _refresh_erasures(self) -> None:
        """Read the group's new tombstones and PENDING erasures now (a store hiccup waits for
        the heartbeat)."""
        erasure = self._processor.erasure
        if erasure is None:
            return
        try:
            erasure.refresh()
        except StateError as exc:
            metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
            log.warning("tombstones not read, retrying", extra={"error": str(exc)[:500]})

    async def _heartbeat(self) -> None:
        """Every second: follow the group's deletions and publish this replica's mark
        (`stream.identity.fence`), then let the gate send what became due."""
        fence = self._fence
        while fence is not None:
            self._refresh_erasures()
            try:
                fence.heartbeat()
            except StateError as exc:
                metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
                log.warning("replica mark not published, retrying", extra={"error": str(exc)[:500]})
            if self._gate is not None:
                self._gate.poll()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _sweep(self) -> None:
        """Every few seconds, housekeeping that must never stop the service."""
        turn = 0
        while True:
            consumer = self._consumer
            rebalanced = consumer is not None and consumer.rebalanced
            auto = self.settings.klaviyo_rate_share == "auto"
            if auto and (turn % SHARE_EVERY == 0 or rebalanced):
                await self._follow_group_size()
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                if self._consumer is not None and not self._consumer.broker_reachable:
                    await self._consumer.probe()  # an idle replica fetches nothing to prove it
                self.sweep_once(time.time(), with_stats=turn % STATS_EVERY == 0)
            except Exception:  # a state-store hiccup: try again next turn
                log.exception("housekeeping failed")
            turn += 1

    async def _follow_group_size(self) -> None:
        """`KLAVIYO_RATE_SHARE=auto`: take 1 / the group's members of Klaviyo's quota."""
        if self._consumer is None or self._governor is None:
            return
        self._consumer.rebalanced = False
        members = await asyncio.to_thread(self._consumer.group_size)
        if members is not None:
            self._governor.set_share(1 / members)
            metrics.RATE_SHARE.set(1 / members)

    def sweep_once(self, now: float, with_stats: bool = True) -> int:
        """Publish lag, stalls and readiness; delete finished held entries; expire held calls
        past their time or over the memory bound (dropped, or leased and sent per
        `EXPIRED_ANONYMOUS`); send again released calls whose lease ran out (a crash); prune
        the dedup window; publish state sizes. Each step runs even when another fails (the
        state store may be down). Returns how many held calls expired."""
        self._observe_partitions()
        guarded = self._guarded
        guarded(lambda: self._flush_dedup(due_only=False))
        guarded(self._settle_held)
        expired = guarded(lambda: self._expire(now)) or 0
        guarded(lambda: self._resend(self._store.reclaim_held(now), reclaimed=True))
        guarded(lambda: self._store.prune(now))
        if self._processor.erasure is not None:
            guarded(self._processor.erasure.purge)
        guarded(lambda: self._publish_state(with_stats))
        return expired

    @staticmethod
    def _guarded(step: Callable[[], T]) -> T | None:
        """Run one housekeeping step; a state-store failure is counted and waits a turn."""
        try:
            return step()
        except StateError as exc:
            metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
            log.warning("housekeeping step failed", extra={"error": str(exc)[:500]})
            return None

    def _expire(self, now: float) -> int:
        """Held calls past their time or over the memory bound: dropped, or sent anonymously."""
        settings, store = self.settings, self._store
        send = settings.expired_anonymous == "send"
        lease = now + store.lease_seconds if send else None
        expired = store.expire_held(now - settings.hold_anonymous_seconds, lease_until=lease)
        while store.held_bytes() > settings.hold_anonymous_max_bytes:
            oldest = store.expire_held(now, limit=100, lease_until=lease)
            if not oldest:
                break
            expired += oldest
        metrics.RECORDS_RELEASED.labels("expired_sent" if send else "expired_dropped").inc(
            len(expired)
        )
        if send:
            self._resend(expired)
        return len(expired)

    def _publish_state(self, with_stats: bool) -> None:
        if with_stats:
            for kind, size in self._store.stats().items():
                metrics.STATE_KEYS.labels(kind).set(size)

    def _resend(self, entries: list[HeldEntry], reclaimed: bool = False) -> None:
        """Held calls to send now: on their person's profile once named, else anonymously."""
        ledger, sender = self._ledger, self._sender
        if not entries or ledger is None or sender is None:
            return
        identity = self._processor.identity
        for entry in entries:
            if ledger.has_held(entry.id):
                continue  # still being delivered here (a long retry): its lease was renewed
            held = Held.decode(entry)
            person = identity.named_owner(held.anonymous_id)
            if person is not None:
                profile, key = identity.profile_with_key(person)
            elif reclaimed and self.settings.expired_anonymous != "send":
                ledger.adopt(held.record)  # its person was never named: dropped, as configured
                ledger.processed(held.record, Outcome.FILTERED)
                continue
            else:
                profile, key = anonymous_profile(held.anonymous_id), ""
            if reclaimed:
                metrics.RECORDS_RELEASED.labels("reclaimed").inc()
            try:
                item = self._processor.released_item(held, profile, key)
            except RecordError as exc:
                ledger.adopt(held.record)
                ledger.reject(held.record, exc, exc.stage)
                continue
            ledger.adopt(held.record)
            sender.add(item)

    def _observe_partitions(self) -> None:
        """Lag, committed-offset lag and stall time per partition; readiness on stalls."""
        consumer, ledger = self._consumer, self._ledger
        if consumer is None or ledger is None:
            return
        for (topic, partition), lag in consumer.lag().items():
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        for (topic, partition), lag in consumer.committed_lag().items():
            metrics.COMMITTED_LAG.labels(topic, str(partition)).set(lag)
        stalled = ledger.stalled()
        for tp in consumer.assigned:
            metrics.PARTITION_STALLED.labels(tp[0], str(tp[1])).set(stalled.get(tp, 0.0))
        self.health.stalled_seconds = max(stalled.values(), default=0.0)

    # shutdown ---------------------------------------------------------------------------------

    async def _shutdown(self, consumer: KafkaConsumer, ledger: Ledger, sender: Sender) -> None:
        """Within `shutdown_timeout` in all: finish what is out (Klaviyo's answers, dead-letter
        writes), keeping a few seconds of it for the commit and leaving the group."""
        self.health.stopping = True
        deadline = time.monotonic() + self._shutdown_timeout
        reserve = min(SHUTDOWN_RESERVE_SECONDS, self._shutdown_timeout / 2)

        def left(keep: float = 0.0) -> float:
            return max(0.0, deadline - keep - time.monotonic())

        catalog = self._catalog
        if self._fatal is None:
            await sender.close(timeout=left(reserve))
            if catalog is not None:  # jobs still out stay in the state store for next time
                await catalog.close(timeout=left(reserve))
            await ledger.close(timeout=left(reserve))
        else:  # nothing more can be sent: what is out stays unfinished, read again later
            await sender.close(timeout=0)
            if catalog is not None:
                await catalog.close(timeout=0)
            await ledger.close(timeout=min(5, left(reserve)))
        self._flush_dedup(due_only=False)
        self._settle_held()
        if self._fence is not None:  # gone: deletions stop waiting for us, now
            self._guarded(self._fence.retire)
        consumer.closing = True
        await consumer.commit()
        await consumer.close()
        if self._dead_letters is not None:
            self._dead_letters.close(timeout=left())


class _Finished:
    """A record that ends without items (filtered on its peek), as the ledger settles items."""

    __slots__ = ("records",)
    label = None

    def __init__(self, records: list[Record]) -> None:
        self.records = records


def _internal(exc: Exception) -> InternalError:
    """An unexpected exception of one record, as the reason of its dead letter."""
    if isinstance(exc, StreamError):
        return InternalError(f"{type(exc).__name__}: {exc}"[:2000])
    return InternalError(f"unexpected {type(exc).__name__}: {str(exc)[:1500]}")


def install_signal_handlers(service: Service) -> None:
    """SIGTERM and SIGINT stop the service gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
