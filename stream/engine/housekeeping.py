"""What a run does beside its records: the heartbeat, the sweep, the held calls' lifecycle.

Nothing here may stop the service: a state-store failure is counted, logged and tried again
on the next turn. What concerns a state store is done for each account's (`AccountParts`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from stream.completion.ledger import Generation, Outcome
from stream.core.errors import RecordError, StateError
from stream.delivery.batch import Kind
from stream.engine.parts import STATE, AccountParts, Parts
from stream.identity.fence import HEARTBEAT_SECONDS
from stream.identity.resolver import Held
from stream.klaviyo.mapping import anonymous_profile
from stream.state import HeldEntry
from stream.telemetry import metrics

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
STATS_EVERY = 12  # state-store sizes once a minute: counting Redis keys scans them
SHARE_EVERY = 6  # KLAVIYO_RATE_SHARE=auto asks the group's size every 30 s
T = TypeVar("T")


class Housekeeping:
    """The heartbeat and the sweep of one run, and the steps the fetch loop borrows."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts

    # the fetch loop's -------------------------------------------------------------------------

    def flush_dedup(self, due_only: bool) -> None:
        """Write delivered message ids to each account's dedup store; a failure waits for the
        next turn (the ids stay in this process's in-flight map meanwhile)."""
        for account in self._parts.accounts.values():
            dedup = account.dedup
            if due_only and not dedup.flush_due():
                continue
            try:
                dedup.flush()
            except StateError as exc:
                metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
                log.warning("dedup store write failed, retrying", extra={"error": str(exc)[:500]})

    def settle_held(self) -> None:
        """Delete the store entries of released held calls that finished."""
        ledger = self._parts.ledger
        for account in self._parts.accounts.values():
            name = account.processor.account
            done = ledger.take_finished_held(name)
            if not done:
                continue
            try:
                account.store.settle_held(done)
            except StateError as exc:
                ledger.return_finished_held(done, name)
                metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
                log.warning("held entries not deleted, retrying", extra={"error": str(exc)[:500]})

    def refresh_erasures(self) -> None:
        """Read the group's new tombstones and PENDING erasures now (a store hiccup waits for
        the heartbeat)."""
        for account in self._parts.accounts.values():
            self._refresh(account)

    @staticmethod
    def _refresh(account: AccountParts) -> None:
        erasure = account.processor.erasure
        if erasure is None:
            return
        try:
            erasure.refresh()
        except StateError as exc:
            metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
            log.warning("tombstones not read, retrying", extra={"error": str(exc)[:500]})

    def publish_waiting(self) -> None:
        """Items batched and not sent yet, per kind (every account's together)."""
        waiting: dict[Kind, int] = {}
        for account in self._parts.accounts.values():
            for kind, lane in account.sender.lanes.items():
                waiting[kind] = waiting.get(kind, 0) + lane.items + lane.parked
        for kind, count in waiting.items():
            metrics.ITEMS_WAITING.labels(kind).set(count)

    def publish_shares(self) -> None:
        """Each account's rate share, as its governor has it."""
        for account in self._parts.accounts.values():
            metrics.RATE_SHARE.set(account.governor.share)

    def quiet(self, generations: list[Generation]) -> None:
        """A partition just given to this replica: if another replica was alive (it may have
        owned it), its consent and deletion actions wait until that owner's last requests can
        no longer land (cut off at the drain bound, on the wire for at most the timeout)."""
        fences = [a.fence for a in self._parts.accounts.values() if a.fence is not None]
        if not any(fence.others for fence in fences):
            return
        settings = self._parts.settings
        wait = settings.revoke_drain_seconds + settings.klaviyo_timeout_seconds
        for gen in generations:
            gen.quiet_until = gen.assigned_at + wait

    # the loops --------------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Every second, for each account: follow the group's deletions and publish this
        replica's mark (`stream.identity.fence`), then let the gate send what became due."""
        accounts = [a for a in self._parts.accounts.values() if a.fence is not None]
        while accounts:
            for account in accounts:
                assert account.fence is not None
                self._refresh(account)
                try:
                    account.fence.heartbeat()
                except StateError as exc:
                    metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
                    log.warning(
                        "replica mark not published, retrying", extra={"error": str(exc)[:500]}
                    )
                account.gate.poll()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def sweep(self, now: Callable[[], float]) -> None:
        """Every few seconds, housekeeping that must never stop the service."""
        parts = self._parts
        source = parts.source
        turn = 0
        while True:
            auto = any(a.settings.klaviyo_rate_share == "auto" for a in parts.accounts.values())
            if auto and (turn % SHARE_EVERY == 0 or source.rebalanced):
                await self._follow_group_size()
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                if not source.broker_reachable:
                    await source.probe()  # an idle replica fetches nothing to prove it
                await self.observe_partitions()
                self.sweep_once(now(), with_stats=turn % STATS_EVERY == 0)
            except Exception:  # a state-store hiccup: try again next turn
                log.exception("housekeeping failed")
            turn += 1

    async def _follow_group_size(self) -> None:
        """`KLAVIYO_RATE_SHARE=auto`: take 1 / the group's members of Klaviyo's quota (each
        account whose share is `auto`; a number stays as set)."""
        source = self._parts.source
        source.rebalanced = False
        members = await asyncio.to_thread(source.group_size)
        if members is not None:
            for account in self._parts.accounts.values():
                if account.settings.klaviyo_rate_share == "auto":
                    account.governor.set_share(1 / members)
            self.publish_shares()

    def sweep_once(self, now: float, with_stats: bool = True) -> int:
        """Delete finished held entries; expire held calls
        past their time or over the memory bound (dropped, or leased and sent per
        `EXPIRED_ANONYMOUS`); send again released calls whose lease ran out (a crash); prune
        the dedup window; publish state sizes. Each step runs even when another fails (the
        state store may be down). Returns how many held calls expired."""
        guarded = self.guarded
        guarded(lambda: self.flush_dedup(due_only=False))
        guarded(self.settle_held)
        expired = 0
        for account in self._parts.accounts.values():
            expired += guarded(partial(self._expire, account, now)) or 0
            guarded(partial(self._reclaim, account, now))
            guarded(partial(account.store.prune, now))
            erasure = account.processor.erasure
            if erasure is not None:
                guarded(erasure.purge)
        if with_stats:
            guarded(self._publish_state)
        return expired

    @staticmethod
    def guarded(step: Callable[[], T]) -> T | None:
        """Run one housekeeping step; a state-store failure is counted and waits a turn."""
        try:
            return step()
        except StateError as exc:
            metrics.DEPENDENCY_ERRORS.labels(STATE).inc()
            log.warning("housekeeping step failed", extra={"error": str(exc)[:500]})
            return None

    # the sweep's steps ------------------------------------------------------------------------

    def _expire(self, account: AccountParts, now: float) -> int:
        """Held calls past their time or over the memory bound: dropped, or sent anonymously."""
        settings, store = self._parts.settings, account.store
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
            self._resend(account, expired)
        return len(expired)

    def _reclaim(self, account: AccountParts, now: float) -> None:
        """Send again the released held calls whose lease ran out (their sender crashed)."""
        self._resend(account, account.store.reclaim_held(now), reclaimed=True)

    def _publish_state(self) -> None:
        for account in self._parts.accounts.values():
            for kind, size in account.store.stats().items():
                metrics.STATE_KEYS.labels(kind).set(size)

    def _resend(
        self, account: AccountParts, entries: list[HeldEntry], reclaimed: bool = False
    ) -> None:
        """Held calls to send now: on their person's profile once named, else anonymously."""
        if not entries:
            return
        parts = self._parts
        ledger, sender, processor = parts.ledger, account.sender, account.processor
        identity = processor.identity
        for entry in entries:
            if ledger.has_held(entry.id, processor.account):
                continue  # still being delivered here (a long retry): its lease was renewed
            held = Held.decode(entry)
            held.record.account = processor.account  # finished in this account's window
            person = identity.named_owner(held.anonymous_id)
            if person is not None:
                profile, key = identity.profile_with_key(person)
            elif reclaimed and parts.settings.expired_anonymous != "send":
                ledger.adopt(held.record)  # its person was never named: dropped, as configured
                ledger.processed(held.record, Outcome.FILTERED)
                continue
            else:
                profile, key = anonymous_profile(held.anonymous_id), ""
            if reclaimed:
                metrics.RECORDS_RELEASED.labels("reclaimed").inc()
            try:
                item = processor.released_item(held, profile, key)
            except RecordError as exc:
                ledger.adopt(held.record)
                ledger.reject(held.record, exc, exc.stage)
                continue
            ledger.adopt(held.record)
            sender.add(item)

    async def observe_partitions(self) -> None:
        """Lag, committed-offset lag and stall time per partition; readiness on stalls."""
        source, ledger, health = self._parts.source, self._parts.ledger, self._parts.health
        for (topic, partition), lag in (await source.lag()).items():
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        for (topic, partition), lag in (await source.committed_lag()).items():
            metrics.COMMITTED_LAG.labels(topic, str(partition)).set(lag)
        stalled = ledger.stalled()
        for tp in source.assigned:
            metrics.PARTITION_STALLED.labels(tp[0], str(tp[1])).set(stalled.get(tp, 0.0))
        health.stalled_seconds = max(stalled.values(), default=0.0)
