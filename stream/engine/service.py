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

from stream.accounts.config import load_accounts
from stream.accounts.connections import AccountLinks
from stream.accounts.routing import Router
from stream.accounts.stores import open_stores
from stream.completion.ledger import DeadLetterWriter, Ledger
from stream.core.calls import Record
from stream.core.clients import require_klaviyo_credentials
from stream.core.errors import Interrupted
from stream.core.retry import until_available
from stream.core.settings import Settings
from stream.engine.assembly import AccountState, account_parts, account_state
from stream.engine.handle import Handler
from stream.engine.housekeeping import Housekeeping
from stream.engine.outcomes import Outcomes
from stream.engine.parts import STATE, Parts, RunResult, Stop
from stream.engine.pipeline import build_dead_letters, identity_limits
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
    outcomes: dict[str, Outcomes]  # each account's
    housekeeping: Housekeeping
    loop: asyncio.AbstractEventLoop  # the loop it runs on (rebalances call into it)


class Service:
    """One consumer-group member; `run()` until `stop()`.

    `source` makes the Kafka side (default: `KafkaConsumer`), `dead_letters` writes dead
    letters (default: the dead-letter topic): tests run the service in-process with in-memory
    ones. With `ACCOUNTS_FILE` it serves every account of the file (`stream.accounts`), each
    with its own state store (`store` is the single account's, without a file)."""

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
        self.accounts = load_accounts(settings)  # the file and every key, checked now
        self._router = None if self.accounts.implicit else Router(self.accounts)
        self._transformer = transformer_from_settings(settings)  # rules and HIPAA, checked now
        if self.accounts.implicit:
            stores = {self.accounts.names[0]: store or open_store(
                settings.state_url,
                settings.dedup_window_seconds,
                settings.held_lease_seconds,
                identity_limits(settings),
            )}  # fmt: skip
        else:
            stores = open_stores(settings, self.accounts)
        self._states: dict[str, AccountState] = {}
        try:
            for account in self.accounts:
                own = settings if self.accounts.implicit else account.settings(settings)
                self._states[account.name] = self._account_state(
                    account.name, own, stores[account.name]
                )
        except BaseException:
            for opened in stores.values():
                opened.close()
            raise
        self._stop = Stop()
        self._shutdown_timeout = (
            settings.shutdown_timeout_seconds if shutdown_timeout is None else shutdown_timeout
        )
        self._source = source or self._kafka
        self._dead_letters = dead_letters
        self.running: Running | None = None  # while `run` runs

    def _account_state(self, name: str, own: Settings, store: StateStore) -> AccountState:
        """An account's processing over its store, built from its settings (its rule files
        checked now: a mistake stops the start with one line)."""
        transformer = self._transformer if own is self.settings else transformer_from_settings(own)
        account = None if self.accounts.implicit else name
        return account_state(name, own, store, transformer, account)

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

    def assemble(self, links: KlaviyoClient | AccountLinks) -> Running:
        """The parts of one run over `links` (every account's client and governor; a bare
        client: the single account's), wired together (nothing started yet); on the event loop
        the run will use."""
        settings = self.settings
        dead_letters = self._dead_letters or build_dead_letters(
            settings, self._decoder, self._transformer,
            None if self.accounts.implicit else {
                n: (a.settings, a.transformer) for n, a in self._states.items()
            },
        )  # fmt: skip
        states = list(self._states.values())
        ledger = Ledger(
            states[0].dedup, dead_letters, self._store_offset,
            dedups=None if self.accounts.implicit else {a.name: a.dedup for a in states},
        )  # fmt: skip
        outcomes: dict[str, Outcomes] = {}
        accounts = {
            state.name: account_parts(
                state,
                links,
                ledger,
                outcomes,
                stop=self._stop,
                waiting=self.health.waiting,
                parked=not self.accounts.implicit,
            )
            for state in states
        }
        parts = Parts(
            settings=settings,
            health=self.health,
            stop=self._stop,
            result=self.result,
            decoder=self._decoder,
            ledger=ledger,
            source=self._source(ledger, self._drain),
            dead_letters=dead_letters,
            accounts=accounts,
            router=self._router,
        )
        handler = Handler(parts)
        for name, account in accounts.items():
            outcomes[name] = Outcomes(parts, account, handler.again_soon)
        loop = asyncio.get_running_loop()
        self.running = Running(parts, handler, outcomes, Housekeeping(parts), loop)
        return self.running

    # running ----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Consume until stopped; returns counts. Raises on a fatal delivery or config error."""
        for state in self._states.values():
            require_klaviyo_credentials(state.settings)
        tune_gc()
        async with (
            AccountLinks(self.settings, self.accounts) as links,
            self.started(links) as running,
        ):
            await self._fetch_loop(running)
        if self._stop.fatal is not None:
            raise self._stop.fatal
        return self.result

    @asynccontextmanager
    async def started(self, links: KlaviyoClient | AccountLinks) -> AsyncIterator[Running]:
        """A run assembled and started (send stages, catalogs, the group's deletions loaded,
        heartbeat, sweep); shut down on exit within `shutdown_timeout`, the state stores
        closed. A stop while the deletions load (a state store down) leaves nothing to do."""
        running = self.assemble(links)
        parts = running.parts
        for account in parts.accounts.values():
            account.sender.start()
            if account.parking is not None:
                account.parking.start()
            if account.catalog is not None:
                account.catalog.start()
        running.housekeeping.publish_shares()
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
            for state in self._states.values():
                state.store.close()
            self.result.dead_lettered = parts.ledger.dead_lettered

    async def _load_erasures(self) -> bool:
        """Each account's group tombstones and erasures, before any record is judged (False:
        stopped while a state store was down)."""
        for state in self._states.values():
            erasure = state.processor.erasure
            if erasure is None:
                continue
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
        source, ledger, catalogs = parts.source, parts.ledger, parts.catalogs
        stop = self._stop
        max_pending = self.settings.max_pending_records
        fetching = None
        while not stop.stopping and stop.fatal is None:
            pending = parts.pending
            if pending >= max_pending:
                source.pause()
            elif source.paused and pending < max_pending // 2:
                source.resume()
            if catalogs:  # catalog records have a bound of their own (each account's)
                if any(c.pending >= c.max_pending for c in catalogs):
                    source.pause_catalog(True)
                elif source.catalog_paused and all(
                    c.pending < c.max_pending // 2 for c in catalogs
                ):
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
                if catalogs:
                    records = await self._to_catalog(running, records)
                await handler.handle(records)
            except Interrupted:
                break  # stopped during a dependency wait: what it held is read again next run
            for account in parts.accounts.values():
                account.gate.poll()  # deletions whose earlier records finished meanwhile
            housekeeping.flush_dedup(due_only=True)
            metrics.PENDING_RECORDS.set(ledger.pending)
            housekeeping.publish_waiting()
        if fetching is not None:
            await fetching  # let the consume thread finish; its records are not begun

    def _room(self, parts: Parts) -> int:
        """How many records a fetch may return: pending never exceeds MAX_PENDING_RECORDS."""
        return min(FETCH_MAX, self.settings.max_pending_records - parts.pending)

    async def _to_catalog(self, running: Running, records: list[Record]) -> list[Record]:
        """Hand the records of catalog topics to their accounts' catalog stages (routed by
        topic and header: a catalog record has no call); the others go on."""
        topics = self.settings.catalog_topics
        mine = [r for r in records if r.topic in topics]
        if not mine:
            return records
        for account, routed in running.handler.route_catalog(mine).items():
            assert account.catalog is not None
            await account.catalog.accept(routed)
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
        for account in parts.accounts.values():
            loop.call_soon_threadsafe(account.sender.hurry)
            if account.catalog is not None:
                loop.call_soon_threadsafe(account.catalog.hurry)
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
        source, ledger, accounts = parts.source, parts.ledger, list(parts.accounts.values())
        self.health.stopping = True
        deadline = time.monotonic() + self._shutdown_timeout
        reserve = min(SHUTDOWN_RESERVE_SECONDS, self._shutdown_timeout / 2)

        def left(keep: float = 0.0) -> float:
            return max(0.0, deadline - keep - time.monotonic())

        fatal = self._stop.fatal is not None  # nothing more can be sent: what is out stays
        #                                       unfinished, read again later
        await asyncio.gather(*(
            account.sender.close(timeout=0 if fatal else left(reserve)) for account in accounts
        ))  # fmt: skip
        await asyncio.gather(*(  # parked work stays unfinished: read again by the next run
            account.parking.close(timeout=0 if fatal else left(reserve))
            for account in accounts if account.parking is not None
        ))  # fmt: skip
        for account in accounts:  # catalog jobs still out stay in the state store for next time
            if account.catalog is not None:
                await account.catalog.close(timeout=0 if fatal else left(reserve))
        await ledger.close(timeout=min(5, left(reserve)) if fatal else left(reserve))
        housekeeping = running.housekeeping
        housekeeping.flush_dedup(due_only=False)
        housekeeping.settle_held()
        for account in accounts:
            if account.fence is not None:  # gone: deletions stop waiting for us, now
                housekeeping.guarded(account.fence.retire)
        source.closing = True
        await source.commit()
        await source.close()
        parts.dead_letters.close(timeout=left())


def install_signal_handlers(service: Service) -> None:
    """SIGTERM and SIGINT stop the service gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
