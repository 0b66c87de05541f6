"""Consume stage: a confluent-kafka consumer driven from asyncio.

`consume(n)` runs on one dedicated thread so the event loop never blocks on the broker.
Offsets: `enable.auto.offset.store=false` — the completion ledger stores an offset only after
the records below it are finished; librdkafka's auto-commit then commits stored offsets on an
interval, and we commit synchronously on revoke and on shutdown. Assignment is
cooperative-sticky, so a rebalance only takes away the partitions that move.

Rebalances run inside `consume()` on the consume thread. An assignment starts a ledger
generation per partition; a revoke first lets the partitions' in-flight work finish (bounded
by `REVOKE_DRAIN_SECONDS`), then commits and ends their generations, so the next owner starts
exactly after what was delivered. Every fetch is stamped with the generations current when it
returned, on the same thread: the ledger never begins a record of an ended assignment.

Calls on the consumer wait while a fetch runs, a rebalance callback included (`store_offsets`
and `position` waited out a whole drain): the event loop, which must finish the drained work
meanwhile, never calls the consumer. Offsets to store, pauses and lag readings go to the consume
thread: stored offsets before the next fetch (or, in a revoke, before its commit), pauses at
the next fetch, lag after the fetch in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream.completion.ledger import Generation, Ledger
from stream.core.clients import kafka_client_config
from stream.core.settings import Settings
from stream.intake.source import Drain
from stream.telemetry import metrics

log = logging.getLogger(__name__)


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The consumer's librdkafka configuration (connection settings come from one converter).

    Our tuning defaults first, so a passthrough property (`KAFKA_CONFIG_SESSION_TIMEOUT_MS`)
    may change them; the properties the offset guarantees rest on come last and always win
    (the settings refuse them in the passthrough anyway)."""
    static = {"group.instance.id": settings.kafka_group_instance_id}
    return {
        "auto.commit.interval.ms": 1000,
        "max.poll.interval.ms": 300_000,
        "session.timeout.ms": 45_000,
        "fetch.max.bytes": 52_428_800,
        "queued.max.messages.kbytes": 65_536,
        **(static if settings.kafka_group_instance_id else {}),
        **kafka_client_config(settings),
        "group.id": settings.kafka_group_id,
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
        "auto.offset.reset": settings.kafka_auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
    }


class KafkaConsumer:
    """The consumer-group member over confluent-kafka (a `stream.intake.source.Source`).

    `drain(partitions)` is called on the consume thread when partitions are revoked, before
    the commit; it returns when their work is finished or its time is up."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        drain: Drain,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._ledger = ledger
        self._drain = drain
        self._group = settings.kafka_group_id
        self._admin_config = kafka_client_config(settings)
        self.closing = False  # set before the final close: no drain, the work is done or gone
        self.rebalanced = False  # set by every assignment change: the group's size may differ
        self.committed: dict[tuple[str, int], int] = {}  # last committed offset per partition
        self._paused = False  # the event topics' partitions (MAX_PENDING_RECORDS)
        self._catalog_paused = False  # the catalog topics' (CATALOG_MAX_PENDING_RECORDS)
        self._applied = {False: False, True: False}  # what librdkafka was told: catalog → paused
        self._stores: dict[tuple[str, int], int] = {}  # offsets to store on the consume thread
        self._stores_queued = False  # an `_apply_stores` waits on the consume thread
        self._stores_lock = threading.Lock()
        self._catalog_topics = frozenset(settings.catalog_topics)
        # False after librdkafka reports every broker down, True again on proof of contact
        # (an assignment, a fetched record, a metadata probe): what /readyz reports.
        self.broker_reachable = True
        self._consumer = Consumer(
            {
                **(config or consumer_config(settings)),
                "on_commit": self._committed,
                "error_cb": self._error,
            }
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consume")
        self.assigned: set[tuple[str, int]] = set()
        self._consumer.subscribe(
            [*settings.kafka_topics, *settings.catalog_topics],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )

    # rebalance callbacks run on the consume thread, inside consume() ----------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.broker_reachable = True
        self.rebalanced = True
        self._ledger.assign((p.topic, p.partition) for p in partitions)
        self.assigned.update((p.topic, p.partition) for p in partitions)
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned))
        held = [p for p in partitions if self._holds(p.topic)]
        if held:
            consumer.pause(held)
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        self.rebalanced = True
        if not self.closing:
            self._drain(gone)
        self._ledger.revoke(gone)  # no offset is stored for them after this: commit all
        self._commit_quietly()
        self.assigned.difference_update(gone)
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned))
        log.info("partitions revoked", extra={"partitions": _names(partitions)})

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        with self._stores_lock:  # another member owns them already: nothing to store
            for tp in gone:
                self._stores.pop(tp, None)
        self._ledger.revoke(gone)  # another member owns them already: nothing to commit
        self.assigned.difference_update(gone)
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned))
        log.warning("partitions lost", extra={"partitions": _names(partitions)})

    def _committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's auto-commit (and ours) report here: the time of the last good commit."""
        if error is None:
            metrics.LAST_COMMIT.set(time.time())
            for p in partitions:
                if p.error is None and p.offset >= 0:
                    self.committed[(p.topic, p.partition)] = p.offset
        elif error.code() != KafkaError._NO_OFFSET:
            log.warning("commit failed", extra={"error": str(error)})

    def _error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors; all brokers down makes the replica not ready."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_reachable = False
            log.warning("all brokers down", extra={"error": str(error)})
        elif error.fatal():
            log.error("kafka fatal error", extra={"error": str(error)})
        else:  # transient (a connection closed, a timeout): librdkafka reconnects by itself
            log.debug("kafka error", extra={"error": str(error)})

    # the loop's calls ----------------------------------------------------------------------

    async def fetch(
        self, max_records: int, timeout: float
    ) -> tuple[list[Message], list[Generation | None]]:
        """Up to `max_records` records, waiting at most `timeout` seconds, each with the ledger
        generation of its partition when the fetch returned."""
        loop = asyncio.get_running_loop()
        messages, stamps = await loop.run_in_executor(
            self._thread, self._consume, max_records, timeout
        )
        if not self.broker_reachable and any(m.error() is None for m in messages):
            self.broker_reachable = True
        return messages, stamps

    def _consume(
        self, max_records: int, timeout: float
    ) -> tuple[list[Message], list[Generation | None]]:
        self._apply_pauses()
        self._apply_stores()
        messages = self._consumer.consume(max_records, timeout)
        return messages, self._ledger.stamp(messages)

    async def probe(self, timeout: float = 5.0) -> bool:
        """Ask a broker for metadata (off the consume thread); marks the broker reachable."""
        try:
            await asyncio.to_thread(self._consumer.list_topics, timeout=timeout)
        except KafkaException:
            return False
        self.broker_reachable = True
        return True

    def pause(self) -> None:
        """Backpressure: stop fetching from the event topics' partitions from the next fetch
        on (membership stays; catalog topics have their own bound, `pause_catalog`)."""
        self._paused = True

    def resume(self) -> None:
        """Fetch again after `pause`, from the next fetch on."""
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_catalog(self, paused: bool) -> None:
        """Stop (or start again) fetching from the catalog topics' partitions only, from the
        next fetch on."""
        self._catalog_paused = paused

    def _apply_pauses(self) -> None:
        """Pause or resume what `pause`/`pause_catalog` asked since the last fetch (consume
        thread)."""
        for catalog, wanted in ((False, self._paused), (True, self._catalog_paused)):
            if wanted != self._applied[catalog]:
                tps = self._tps(catalog=catalog)
                if tps:
                    (self._consumer.pause if wanted else self._consumer.resume)(tps)
                self._applied[catalog] = wanted

    @property
    def catalog_paused(self) -> bool:
        return self._catalog_paused

    def _holds(self, topic: str) -> bool:
        """Whether a partition of `topic` is paused now (as librdkafka was told)."""
        return self._applied[topic in self._catalog_topics]

    def store(self, topic: str, partition: int, next_offset: int) -> None:
        """Mark `next_offset` as the position to commit for one partition: handed to the
        consume thread, stored there after the fetch in progress (never waits)."""
        with self._stores_lock:
            self._stores[(topic, partition)] = next_offset
            if self._stores_queued:
                return
            self._stores_queued = True
        with contextlib.suppress(RuntimeError):  # closed: the final commit is done
            self._thread.submit(self._apply_stores)

    def _apply_stores(self) -> None:
        """Store the offsets `store` was given since the last time (consume thread)."""
        with self._stores_lock:
            stores, self._stores, self._stores_queued = self._stores, {}, False
        for (topic, partition), offset in stores.items():
            try:
                self._consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset)])
                metrics.OFFSETS_STORED.inc()
            except KafkaException as exc:  # partition no longer ours: its new owner re-reads
                log.debug("offset not stored", extra={"error": str(exc)})

    async def commit(self) -> None:
        """Commit stored offsets now (shutdown)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._commit_quietly)

    def _commit_quietly(self) -> None:
        self._apply_stores()
        try:
            self._consumer.commit(asynchronous=False)
            metrics.LAST_COMMIT.set(time.time())
        except KafkaException as exc:
            if "NO_OFFSET" not in str(exc):
                log.warning("commit failed", extra={"error": str(exc)})

    def group_size(self, timeout: float = 10.0) -> int | None:
        """Members of this consumer group as the group coordinator sees them (None: unknown).
        Blocking: call it off the event loop."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._admin_config)
        try:
            futures = admin.describe_consumer_groups([self._group], request_timeout=timeout)
            description = futures[self._group].result(timeout=timeout)
        except Exception:  # unknown this time: the share stays as it was
            return None
        return len(description.members) or None

    async def committed_lag(self) -> dict[tuple[str, int], int]:
        """High watermark minus the last committed offset per assigned partition (cached
        watermarks, no I/O): what a restart would read again, and a stuck partition's growth.
        Read on the consume thread, after the fetch in progress."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._committed_lag)

    def _committed_lag(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for topic, partition in list(self.assigned):
            committed = self.committed.get((topic, partition))
            if committed is None:
                continue
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                out[(topic, partition)] = max(high - committed, 0)
        return out

    async def lag(self) -> dict[tuple[str, int], int]:
        """High watermark minus position per assigned partition (cached watermarks, no I/O).
        Read on the consume thread, after the fetch in progress: `position` waits for a
        rebalance callback to return, and the event loop must not."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._lag)

    def _lag(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        tps = self._tps()
        if not tps:
            return out
        for tp in self._consumer.position(tps):
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
        return out

    async def close(self) -> None:
        """Leave the group (after the final commit)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._consumer.close)
        self._thread.shutdown(wait=True)

    def _tps(self, catalog: bool | None = None) -> list[TopicPartition]:
        """Assigned partitions: all, or only the catalog topics' (True) or the others' (False)."""
        return [
            TopicPartition(t, p)
            for t, p in self.assigned
            if catalog is None or (t in self._catalog_topics) == catalog
        ]


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}[{p.partition}]" for p in partitions)
