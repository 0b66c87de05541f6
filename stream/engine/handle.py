"""The per-record stages of one fetch: route, decode, deduplicate, process, hand on.

No exception from one record leaves here: bad input and anything unexpected become a dead
letter with the reason (the per-record barrier), and the fetch goes on. A dependency that
fails (state store, Schema Registry) makes the stage wait and try again; a stop ends the
wait (`Interrupted`: what it held is read again by the next run).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from stream.accounts.routing import NO_ACCOUNT, Router
from stream.completion.ledger import Generation, Outcome
from stream.core.calls import Call, Record
from stream.core.errors import (
    ConfigError,
    FatalDeliveryError,
    InternalError,
    Interrupted,
    NoAccount,
    RecordError,
    StateError,
    StreamError,
    Unavailable,
)
from stream.core.retry import until_available
from stream.delivery.actions import Action
from stream.delivery.batch import Item
from stream.engine.parts import STATE, AccountParts, Parts
from stream.engine.process import Result
from stream.identity.erasure import profile_identifiers
from stream.intake.decode import Peeked
from stream.rules.route import Route
from stream.telemetry import metrics

YIELD_EVERY = 100  # records processed between two turns of the event loop (governor timing)
MAX_ROUTES = 10_000  # peeked (type, name, integrations) → routing answer, remembered
MAX_ROUTE_KEY = 1024  # characters of name + integrations beyond which nothing is remembered

Routed = tuple[Call, Record, Route]  # a record (or an account's copy) that goes on, and how


class Handler:
    """decode → route → dedup (one store round trip per fetch and account) → process → send.

    With an accounts file each decoded call is routed to its accounts first
    (`stream.accounts.routing`): one copy of the record per account when it goes to several
    (`Ledger.fan_out`), each deduplicated, processed and sent by its account's parts."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._routes: dict[Peeked, Route | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # records processed again
        self._hipaa = {n: a.settings.hipaa_mode for n, a in parts.accounts.items()}

    async def handle(self, records: list[Record]) -> None:
        """One fetch's records, each to its outcome or handed to the send stage and gate."""
        parts = self._parts
        decoder = parts.decoder
        waiting, stop = parts.health.waiting, parts.stop.asked
        await until_available(
            lambda: decoder.prepare(records), "schema registry", waiting=waiting, stop=stop
        )
        if parts.router is None:
            groups = {parts.only: self._route_one(records)}
        else:
            groups = self._route_accounts(records, parts.router)
        for account, routed in groups.items():
            await self._run(account, routed)

    def _route_one(self, records: list[Record]) -> list[Routed]:
        """The records of the only account (no accounts file): decoded and routed by its
        rules; what is filtered finishes here."""
        parts = self._parts
        ledger, decoder, processor = parts.ledger, parts.decoder, parts.only.processor
        routed: list[Routed] = []
        types: Counter[str] = Counter()
        reasons: Counter[tuple[str, str]] = Counter()  # filtered: counted once per fetch
        # With event definitions most records may be for others: route on a peek at the few
        # fields routing reads (`Decoder.peek`), decode in full only what goes on, and finish
        # what is filtered together.
        peek = decoder.peek if processor.router.definitions is not None else None
        filtered: list[_Finished] = []
        for record in records:
            try:
                route: Route | None = None
                peeked = peek(record.value, record.headers) if peek is not None else None
                if peeked is not None:
                    route = self._peeked_route(peeked)
                    if route is not None and route.filtered:
                        types[peeked[0]] += 1
                        reasons[peeked[0], route.reason or ""] += 1
                        filtered.append(_Finished([record]))
                        continue
                call = decoder.decode(record.value, record.headers)
                types[call.type] += 1
                record.message_id = call.message_id
                if route is None:
                    route = processor.route(call)
                    if route.filtered:
                        reasons[call.type, route.reason or ""] += 1
                        ledger.processed(record, Outcome.FILTERED)
                        continue
            except Exception as exc:  # the per-record barrier: a record built to hurt
                self._refuse(record, exc, "decode")
                continue
            routed.append((call, record, route))
        for call_type, count in types.items():
            metrics.RECORDS_DECODED.labels(call_type).inc(count)
        for (call_type, why), count in reasons.items():
            metrics.RECORDS_FILTERED.labels(call_type, why).inc(count)
        if filtered:
            ledger.settle(filtered, Outcome.FILTERED)
        return routed

    def _route_accounts(
        self, records: list[Record], router: Router
    ) -> dict[AccountParts, list[Routed]]:
        """Each record decoded, routed to its accounts (a copy per account when several), and
        by each account's own rules; no account: filtered (`no_account`) or dead-lettered, as
        the accounts file says."""
        parts = self._parts
        ledger, decoder, accounts = parts.ledger, parts.decoder, parts.accounts
        groups: dict[AccountParts, list[Routed]] = {}
        types: Counter[str] = Counter()
        reasons: Counter[tuple[str, str]] = Counter()
        vias: Counter[tuple[str, str]] = Counter()
        for record in records:
            try:
                call = decoder.decode(record.value, record.headers)
                types[call.type] += 1
                decision = router.route(record.topic, record.headers, call)
            except Exception as exc:  # the per-record barrier: a record built to hurt
                self._refuse(record, exc, "decode")
                continue
            routes = decision.routes
            if not routes:
                if decision.unmatched == "dead-letter":
                    ledger.reject(record, NoAccount(decision.reason), "route")
                else:
                    reasons[call.type, NO_ACCOUNT] += 1
                    ledger.processed(record, Outcome.FILTERED)
                continue
            copies = self._copies(record, decision.accounts)
            for copy, via in zip(copies, routes, strict=True):
                account = accounts[via.account]
                vias[via.account, via.via] += 1
                copy.message_id = call.message_id
                try:
                    route = account.processor.route(call)
                except Exception as exc:  # the barrier, per copy: its account's rules
                    self._refuse(copy, exc, "route")
                    continue
                if route.filtered:
                    reasons[call.type, route.reason or ""] += 1
                    ledger.processed(copy, Outcome.FILTERED)
                    continue
                groups.setdefault(account, []).append((call, copy, route))
        for call_type, count in types.items():
            metrics.RECORDS_DECODED.labels(call_type).inc(count)
        for (call_type, why), count in reasons.items():
            metrics.RECORDS_FILTERED.labels(call_type, why).inc(count)
        for (name, how), count in vias.items():
            metrics.RECORDS_ROUTED.labels(name, how).inc(count)
        return groups

    def _refuse(self, record: Record, exc: Exception, stage: str) -> None:
        """The per-record barrier's verdict: a record's own error (or anything unexpected, at
        `stage`) dead-letters it; a setup or fatal delivery error stops the run."""
        if isinstance(exc, (ConfigError, FatalDeliveryError)):
            raise exc
        if isinstance(exc, RecordError):
            self._parts.ledger.reject(record, exc, exc.stage)
        else:
            self._parts.ledger.reject(record, internal(exc), stage)

    def _copies(self, record: Record, names: tuple[str, ...]) -> list[Record]:
        """The record itself for one account; a copy per account for several, whose dead
        letters are redacted as the strictest account's (one HIPAA account is enough)."""
        if len(names) == 1:
            record.account = names[0]
            return [record]
        copies = self._parts.ledger.fan_out(record, names)
        hipaa = self._hipaa
        strict = next((name for name in names if hipaa[name]), None)
        if strict is not None:
            for copy in copies:
                if not hipaa[copy.account or ""]:
                    copy.redact_as = strict
        return copies

    def route_catalog(self, records: list[Record]) -> dict[AccountParts, list[Record]]:
        """Catalog records to their accounts' catalog stages, routed by topic and header (a
        catalog record has no call: field rules never match); no account: filtered or
        dead-lettered, as the accounts file says."""
        parts = self._parts
        router, ledger = parts.router, parts.ledger
        if router is None:
            return {parts.only: records}
        groups: dict[AccountParts, list[Record]] = {}
        for record in records:
            decision = router.route(record.topic, record.headers, None)
            if not decision.routes:
                if decision.unmatched == "dead-letter":
                    ledger.reject(record, NoAccount(decision.reason), "route")
                else:
                    metrics.RECORDS_FILTERED.labels("catalog", NO_ACCOUNT).inc()
                    ledger.processed(record, Outcome.FILTERED)
                continue
            for copy, via in zip(self._copies(record, decision.accounts), decision.routes,
                                 strict=True):  # fmt: skip
                metrics.RECORDS_ROUTED.labels(via.account, via.via).inc()
                groups.setdefault(parts.accounts[via.account], []).append(copy)
        return groups

    async def _run(self, account: AccountParts, routed: list[Routed]) -> None:
        """One account's routed records of a fetch: deduplicated in its window (one store
        round trip), processed, handed on."""
        parts = self._parts
        ledger = parts.ledger
        waiting, stop = parts.health.waiting, parts.stop.asked
        fresh = await until_available(
            lambda: account.dedup.fresh([r for _, r, _ in routed]), STATE,
            waiting=waiting, stop=stop,
        )  # fmt: skip
        for n, ((call, record, route), new) in enumerate(zip(routed, fresh, strict=True)):
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
                result = self._barrier(account, call, record, route)
            except Unavailable as exc:  # a dependency failed: wait it out, this failure first
                result = await self._process(account, call, record, route, exc)
            if result is not None:
                self._dispatch(account, record, result)

    def _peeked_route(self, peeked: Peeked) -> Route | None:
        """`Processor.route_peeked`, remembered for the few distinct (type, name, integrations)
        a topic carries; odd input never grows the memo."""
        routes = self._routes
        if peeked in routes:
            return routes[peeked]
        route = self._parts.only.processor.route_peeked(peeked)
        name, integrations = peeked[1] or "", peeked[2] or ""
        if len(routes) < MAX_ROUTES and len(name) + len(integrations) <= MAX_ROUTE_KEY:
            routes[peeked] = route
        return route

    async def _process(
        self,
        account: AccountParts,
        call: Call,
        record: Record,
        route: Route | None,
        failed: Unavailable | None = None,
    ) -> Result | None:
        """One call through transform → identity → map, behind the per-record barrier: a
        dependency failure (`failed`: the first one, already seen) waits and tries again (the
        store's steps are atomic), anything else dead-letters the record (None)."""
        first = [failed] if failed is not None else []

        def attempt() -> Result | None:
            if first:
                raise first.pop()
            return self._barrier(account, call, record, route)

        parts = self._parts
        return await until_available(
            attempt, STATE, waiting=parts.health.waiting, stop=parts.stop.asked
        )

    def _barrier(
        self, account: AccountParts, call: Call, record: Record, route: Route | None
    ) -> Result | None:
        try:
            return account.processor.process(call, record, route)
        except Unavailable:
            raise  # a dependency: waited out by the caller
        except Exception as exc:  # the per-record barrier
            self._refuse(record, exc, "process")
        return None

    def _dispatch(self, account: AccountParts, record: Record, result: Result) -> None:
        """Hand a processed record's items (and the held calls it released) to the send stage,
        its actions to the gate (all of them to the gate's hold while a deletion it names is
        under way), its failures to the ledger; then the record is processed."""
        ledger, sender, gate = self._parts.ledger, account.sender, account.gate
        waits = self._waits(account, result)  # a deletion of its person is in flight: all wait
        for item in result.released:  # the person's held calls: theirs, so they wait too
            ledger.adopt(item.records[0])
            if not waits:
                sender.add(item)
        gen = record.generation
        quiet = gen.quiet_until if isinstance(gen, Generation) else 0.0
        ledger.expect(record, len(result.actions) + len(result.items) + len(result.failures))
        for item in result.items:  # made by this processing of it (`Item.stamp`)
            item.stamp = record.stamp
        for action in result.actions:  # before the record's items: list changes count them
            action.stamp = record.stamp
            if quiet > action.ready_at:
                action.ready_at = quiet
            if not waits:
                gate.put(action)
        for item in result.items:
            if not waits:
                sender.add(item)
        if waits:
            gate.hold(waits, [*result.released, *result.items], result.actions)
        for failure in result.failures:  # a bad order line: a dead letter of its own
            ledger.fail([failure], failure.error, failure.error.stage)
        ledger.processed(record, result.outcome)

    def _waits(self, account: AccountParts, result: Result) -> tuple[str, ...]:
        """The erasures a processed record's work waits for: those of what its call names;
        those still under way that removed an identifier of a profile it goes to (the person
        came back meanwhile, reached through an identifier the deletion never knew; looked up
        only while one is under way, and the store down, it waits for all of them); and those
        the gate holds earlier work of its persons for (a person's work leaves in order)."""
        gate, erasure = account.gate, account.processor.erasure
        under_way = erasure is not None and erasure.has_open
        if not under_way and not gate.holds:  # the usual record: nothing to look up
            return result.after_erasures
        work: list[Item | Action] = [*result.released, *result.items, *result.actions]
        waits = set(result.after_erasures)
        waits |= gate.holding({w.person for w in work if w.person is not None})
        if erasure is not None and under_way:
            idents = [
                ident
                for item in work
                if not (isinstance(item, Action) and item.erasure)  # a deletion: its own
                for ident in profile_identifiers(item.profile)
            ]
            try:
                waits.update(erasure.pending(idents))
            except StateError:
                waits.update(erasure.open)
        return tuple(sorted(waits))

    def again_soon(self, record: Record) -> None:
        """Process a record anew, soon (it raced a deletion); its token is open."""
        task = asyncio.get_running_loop().create_task(self._again(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _again(self, record: Record) -> None:
        parts = self._parts
        decoder = parts.decoder
        account = parts.account_of(record)
        try:
            await until_available(
                lambda: decoder.prepare([record]), "schema registry",
                waiting=parts.health.waiting, stop=parts.stop.asked,
            )  # fmt: skip
            call = decoder.decode(record.value, record.headers)
            result = await self._process(account, call, record, None)  # routed as before
        except RecordError as exc:
            parts.ledger.reject(record, exc, exc.stage)
            return
        except Interrupted:
            return  # stopping: the record stays unfinished, read again by the next owner
        if result is not None:
            self._dispatch(account, record, result)


class _Finished:
    """A record that ends without items (filtered on its peek), as the ledger settles items."""

    __slots__ = ("records",)
    label = None

    def __init__(self, records: list[Record]) -> None:
        self.records = records


def internal(exc: Exception) -> InternalError:
    """An unexpected exception of one record, as the reason of its dead letter."""
    if isinstance(exc, StreamError):
        return InternalError(f"{type(exc).__name__}: {exc}"[:2000])
    return InternalError(f"unexpected {type(exc).__name__}: {str(exc)[:1500]}")
