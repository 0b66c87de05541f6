"""`klaviyo-stream run`: the consume → … → ack loop of one consumer-group member.

Guarantees: an offset is stored only when every earlier record of its partition was accepted
by Klaviyo or written to the dead-letter topic (at-least-once); `unique_id` = messageId makes
a replay harmless at Klaviyo. On SIGTERM/SIGINT: stop fetching, send what is batched, wait
for in-flight requests (bounded by `shutdown_timeout`), commit, leave the group, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Message

from stream import metrics
from stream.ack import OffsetTracker
from stream.batch import Batch, Batcher, Item
from stream.calls import Call, Source
from stream.consume import KafkaSource, Partitions
from stream.deadletter import DeadLetters
from stream.decode import Decoder, make_decoder
from stream.dedup import Deduplicator
from stream.deliver import Deliverer, FatalDeliveryError
from stream.errors import RecordError
from stream.health import Health
from stream.hipaa import dead_letter_redactor
from stream.identity import Held, IdentityResolver
from stream.klaviyo.client import KlaviyoClient
from stream.klaviyo.governor import Governor
from stream.process import Processor
from stream.route import router_from_settings
from stream.settings import Settings, kafka_client_config, require_klaviyo_credentials
from stream.state import StateError, StateStore, open_store
from stream.transform import transformer_from_settings

log = logging.getLogger(__name__)

FETCH_MAX = 1000
FETCH_TIMEOUT = 0.1
YIELD_EVERY = 100  # records processed between two turns of the event loop (governor timing)
SWEEP_SECONDS = 5.0
STATS_EVERY = 12  # state-store sizes once a minute: counting Redis keys scans them
GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)


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
        shutdown_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.health = health or Health()
        self.result = RunResult()
        self._decoder = decoder or make_decoder(settings.schema_registry_url)
        self._store = store or open_store(settings.state_url, settings.dedup_window_seconds)
        self._dedup = Deduplicator(self._store)
        identity = IdentityResolver(
            self._store,
            email_first=settings.use_email_as_identifier,
            cache_seconds=settings.identity_cache_seconds,
        )
        self._transformer = transformer_from_settings(settings)  # routes/rules/HIPAA, checked now
        self._processor = Processor(
            router_from_settings(settings), identity, settings.phone_default_region,
            self._transformer,
        )
        self._batcher = Batcher(
            settings.batch_max_events, settings.batch_max_profiles, settings.batch_linger_ms / 1000
        )
        self._tracker = OffsetTracker()
        self._stopping = asyncio.Event()
        self._shutdown_timeout = shutdown_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._source: KafkaSource | None = None
        self._dead_letters: DeadLetters | None = None
        self._deliverer: Deliverer | None = None

    def stop(self) -> None:
        """Ask the loop to finish (signal-safe)."""
        self._stopping.set()

    async def run(self) -> RunResult:
        """Consume until stopped; returns counts. Raises on a fatal delivery error."""
        settings = self.settings
        require_klaviyo_credentials(settings)
        tune_gc()
        redact = settings.hipaa_mode and not settings.hipaa_dlq_keep_original
        self._dead_letters = DeadLetters(
            kafka_client_config(settings),
            settings.dlq_topic,
            dead_letter_redactor(self._decoder.decode, self._transformer) if redact else None,
        )
        self._source = KafkaSource(settings, on_revoke=self._revoked)
        client = KlaviyoClient(
            settings.klaviyo_base_url,
            settings.klaviyo_api_key,
            settings.klaviyo_revision,
            timeout=settings.klaviyo_timeout_seconds,
            max_connections=settings.klaviyo_max_connections,
            public_key=settings.klaviyo_public_key if settings.klaviyo_mode == "client" else None,
        )
        async with client:
            self._deliverer = Deliverer(
                client,
                self._completed,
                self._dead_letter,
                max_in_flight=settings.klaviyo_max_in_flight,
                client_mode=settings.klaviyo_mode == "client",
                governor=Governor(
                    None if settings.klaviyo_rate_governor else {},
                    share=settings.klaviyo_rate_share,
                    time_scale=settings.klaviyo_rate_time_scale,
                ),
            )
            sweeper = asyncio.create_task(self._sweep())
            try:
                await self._loop(self._source)
            finally:
                sweeper.cancel()
                await self._shutdown(self._source)
                self._store.close()
        if self._fatal is not None:
            raise self._fatal
        return self.result

    async def _loop(self, source: KafkaSource) -> None:
        """Fetch and handle until stopped. The next fetch runs on the consume thread while this
        batch is handled (librdkafka releases the GIL), so the broker and the pipeline overlap.
        Records a last fetch returned after the stop are not begun: their offsets are never
        stored, the group's next owner reads them again."""
        max_pending = self.settings.max_pending_records
        fetching: asyncio.Task[list[Message]] | None = None
        while not self._stopping.is_set() and self._fatal is None:
            if self._tracker.pending >= max_pending:
                source.pause()
            elif source.paused and self._tracker.pending < max_pending // 2:
                source.resume()
            if fetching is None:
                fetching = asyncio.create_task(source.fetch(self._room(0), FETCH_TIMEOUT))
            messages = await fetching
            fetching = None
            self.health.polled()
            self.health.broker_reachable = source.broker_reachable
            self.health.assigned_partitions = len(source.assigned)
            room = self._room(len(messages))
            if room > 0 and not source.paused:
                fetching = asyncio.create_task(source.fetch(room, FETCH_TIMEOUT))
            await self._handle(messages)
            for batch in self._batcher.due():
                self._spawn(batch)
            self._flush_delivered(due_only=True)
            metrics.PENDING_RECORDS.set(self._tracker.pending)
        if fetching is not None:
            await fetching  # let the consume thread finish before the consumer closes

    def _room(self, about_to_begin: int) -> int:
        """How many records a fetch may return: pending never exceeds MAX_PENDING_RECORDS."""
        free = self.settings.max_pending_records - self._tracker.pending - about_to_begin
        return min(FETCH_MAX, free) if about_to_begin else max(1, min(FETCH_MAX, free))

    async def _handle(self, messages: list[Message]) -> None:
        """decode → dedup (one store round trip per fetch) → process → batch."""
        sources = self._begin(messages)
        decode = self._decoder.decode
        decoded: list[tuple[Call, Source]] = []
        for source in sources:
            try:
                call = decode(source.value)
            except RecordError as exc:
                await self._reject(source, exc)
                continue
            source.message_id = call.message_id
            decoded.append((call, source))
        for call_type, count in Counter(call.type for call, _ in decoded).items():
            metrics.RECORDS_DECODED.labels(call_type).inc(count)
        fresh = self._dedup.fresh([call.message_id for call, _ in decoded])
        process, enqueue = self._processor.process, self._enqueue
        finished: list[Source] = []  # held durably in the state store: completed together
        for n, ((call, source), new) in enumerate(zip(decoded, fresh, strict=True)):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let paced requests and their answers go meanwhile
            if not new:
                source.message_id = None  # not ours to mark: the first copy is
                self._completed([source], False)
                continue
            try:
                outcome = process(call, source)
            except RecordError as exc:
                await self._reject(source, exc)
                continue
            if outcome.held:
                finished.append(source)
            elif not outcome.carried:
                self._completed([source], False)
            for item in outcome.items:
                enqueue(item)
        if finished:
            self._completed(finished, True)

    def _begin(self, messages: list[Message]) -> list[Source]:
        """Sources of the fetched records, tracked from now on; counted once per fetch (label
        lookups per record are a visible share of the loop)."""
        sources: list[Source] = []
        for message in messages:
            if message.error() is not None:
                log.warning("consume error", extra={"error": str(message.error())})
                continue
            headers = message.headers()
            sources.append(
                Source(
                    message.topic(), message.partition(), message.offset(),  # type: ignore[arg-type]
                    message.key(), message.value(),
                    list(headers.items()) if isinstance(headers, dict) else headers,
                )
            )
        self._tracker.begin(sources)
        self.result.consumed += len(sources)
        for (topic, partition), count in Counter((s.topic, s.partition) for s in sources).items():
            metrics.RECORDS_CONSUMED.labels(topic, str(partition)).inc(count)
        return sources

    async def _reject(self, source: Source, exc: RecordError) -> None:
        await self._dead_letter([source], exc, exc.stage, 1, time.time())
        self._completed([source], False)

    def _enqueue(self, item: Item) -> None:
        for batch in self._batcher.add(item):
            self._spawn(batch)

    def _spawn(self, batch: Batch) -> None:
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: Batch) -> None:
        assert self._deliverer is not None
        try:
            await self._deliverer.send(batch)
        except FatalDeliveryError as exc:
            log.error("fatal delivery error, stopping", extra={"error": str(exc)})
            self._fatal = exc
            self._stopping.set()

    def _completed(self, sources: list[Source], delivered: bool) -> None:
        """Records are finished (delivered, held, filtered or dead-lettered): move offsets."""
        assert self._source is not None
        ids = [s.message_id for s in sources if s.message_id]
        if delivered:
            self._dedup.delivered(ids)
        else:
            self._dedup.abandoned(ids)
        moved = self._tracker.complete(s for s in sources if s.tracked)
        for (topic, partition), offset in moved.items():
            self._source.store(topic, partition, offset)

    def _flush_delivered(self, due_only: bool) -> None:
        """Write delivered message ids to the dedup store; a store hiccup waits for the next
        turn (the ids stay in this process's in-flight set meanwhile)."""
        try:
            if due_only:
                self._dedup.flush_due()
            else:
                self._dedup.flush()
        except StateError as exc:
            log.warning("dedup store write failed, retrying", extra={"error": str(exc)})

    async def _sweep(self) -> None:
        """Every few seconds, housekeeping that must never stop the service."""
        turn = 0
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                if self._source is not None and not self._source.broker_reachable:
                    await self._source.probe()  # an idle replica fetches nothing to prove it
                self.sweep_once(time.time(), with_stats=turn % STATS_EVERY == 0)
            except Exception:  # a state-store hiccup: try again next turn
                log.exception("housekeeping failed")
            turn += 1

    def sweep_once(self, now: float, with_stats: bool = True) -> int:
        """Expire held calls past their time or over the memory bound (dropped or sent per
        `EXPIRED_ANONYMOUS`), prune the dedup window, publish lag and state sizes.
        Returns how many held calls expired."""
        settings = self.settings
        expired = self._store.expire_held(now - settings.hold_anonymous_seconds)
        while self._store.held_bytes() > settings.hold_anonymous_max_bytes:
            oldest = self._store.expire_held(now, limit=100)
            if not oldest:
                break
            expired += oldest
        send = settings.expired_anonymous == "send"
        for _anonymous_id, payload in expired:
            item = Processor.expired(Held.decode(payload), send)
            if item is not None:
                self._enqueue(item)
        self._store.prune(now)
        if self._source is not None:
            for (topic, partition), lag in self._source.lag().items():
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        if with_stats:
            for kind, size in self._store.stats().items():
                metrics.STATE_KEYS.labels(kind).set(size)
        return len(expired)

    async def _dead_letter(
        self,
        sources: list[Source],
        error: BaseException,
        stage: str,
        attempts: int,
        first_attempt: float,
    ) -> None:
        assert self._dead_letters is not None
        for s in sources:
            metrics.DEAD_LETTERS.labels(stage, type(error).__name__).inc()
            log.warning(
                "dead-lettered",
                extra={
                    "stage": stage,
                    "error": str(error),
                    "topic": s.topic,
                    "partition": s.partition,
                    "offset": s.offset,
                },
            )
            await self._dead_letters.send(s, error, stage, attempts, first_attempt)
            self.result.dead_lettered += 1

    def _revoked(self, partitions: Partitions) -> None:
        self._tracker.forget(partitions)

    async def _shutdown(self, source: KafkaSource) -> None:
        self.health.stopping = True
        for batch in self._batcher.drain():
            self._spawn(batch)
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=self._shutdown_timeout)
            for task in pending:
                task.cancel()
        self._flush_delivered(due_only=False)
        await source.commit()
        await source.close()
        if self._dead_letters is not None:
            self._dead_letters.close()


def install_signal_handlers(service: Service) -> None:
    """SIGTERM and SIGINT stop the service gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
