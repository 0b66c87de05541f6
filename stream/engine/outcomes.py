"""A batch's trip to Klaviyo and back: the late check, the wire, the outcomes to the ledger.

The send stage calls `deliver` as it takes a batch. Work stamped before a deletion learnt of
since is judged again first (`admit`); from then until answered the batch is on the wire
(`Fence`); the gate hears what was answered (erasures settle before their records finish),
and the ledger gets each item's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

from stream.completion.ledger import Outcome, ended
from stream.core.calls import Record
from stream.core.errors import (
    ConfigError,
    FatalDeliveryError,
    Interrupted,
    KlaviyoError,
    StreamError,
)
from stream.core.retry import until_available
from stream.delivery.actions import ActionBatch
from stream.delivery.batch import Batch, Sendable, stamp_of
from stream.delivery.deliver import Settlement
from stream.engine.handle import internal
from stream.engine.parts import STATE, AccountParts, Parts
from stream.identity.erasure import profile_identifiers
from stream.telemetry import metrics

log = logging.getLogger(__name__)

QUIET = ("deletion", "confirm")  # batches that never make a profile: not on the fence's wire


class Outcomes:
    """Sends one account's batches (for its send stage) and gives their outcomes to the
    ledger."""

    def __init__(
        self, parts: Parts, account: AccountParts, again: Callable[[Record], None]
    ) -> None:
        self._parts = parts
        self._account = account
        self._again = again  # process a record anew (it raced a deletion)

    async def deliver(self, batch: Batch | ActionBatch) -> None:
        """Send one batch and settle its items. With an accounts file, what the account's
        trouble left unsent (a refused key, retries run out in an outage) is parked
        (`stream.engine.parking`) instead of stopping the service or being dead-lettered."""
        parts, account = self._parts, self._account
        ledger, gate, parking = parts.ledger, account.gate, account.parking
        erasure = account.processor.erasure
        mark = erasure.mark if erasure is not None else 0  # what `admit` judges against
        origin = batch  # what the send stage took (a parked part is kept under it)
        try:
            admitted = await self.admit(batch, mark)
        except Interrupted:
            return  # stopping with the state store down: its records stay unfinished
        if admitted is None:
            return
        batch = admitted
        fence = account.fence
        token = fence.sending(mark) if fence is not None and batch.kind not in QUIET else None
        settlement = Settlement()
        try:
            await account.deliverer.send(batch, settlement)
        except (FatalDeliveryError, ConfigError) as exc:
            if parking is None:
                parts.stop.fail(exc)
                return  # its records stay unfinished: read again once the cause is fixed
            settlement.kept = list(batch.without(settlement.settled).items)
        except Exception as exc:
            log.exception("delivery failed unexpectedly")
            await gate.answered(batch.items, batch.items)
            ledger.fail(batch.items, internal(exc), "deliver")
            return
        finally:
            if token is not None and fence is not None:
                fence.answered(token)
        if parking is not None:
            troubled = [f for f in settlement.failed if parks(f.error)]
            if troubled:  # retried until the policy gave up: the account's trouble, kept
                settlement.failed = [f for f in settlement.failed if not parks(f.error)]
                settlement.kept += [item for failure in troubled for item in failure.items]
            if settlement.kept:
                kept = {id(item) for item in settlement.kept}
                parking.keep(origin, batch.without(i for i in batch.items if id(i) not in kept))
                batch = batch.without(settlement.kept)
        if settlement.cancelled:
            self.cancel(settlement.cancelled)
        # erasures settled before their records finish
        failed = [item for failure in settlement.failed for item in failure.items]
        cancelled = {id(item) for item in settlement.cancelled}
        try:
            await gate.answered([i for i in batch.items if id(i) not in cancelled], failed)
        except Interrupted:
            return  # stopping with the state store down: its records stay unfinished
        ledger.settle(settlement.delivered)
        for failure in settlement.failed:
            ledger.fail(failure.items, failure.error, failure.stage)

    async def admit(
        self, batch: Batch | ActionBatch, mark: int
    ) -> Batch | ActionBatch | None:
        """The late check (`Erasure.late`): items whose records were judged before a deletion
        of what they name, up to tombstone mark `mark`, that this replica has read since.
        Records older than it finish filtered; newer ones are processed again once that erasure
        is done. The rest goes on (None: nothing is left to send)."""
        parts, account = self._parts, self._account
        gone = [item for item in batch.items if ended(item)]
        if gone:  # its partition moved on past the drain bound: its next owner sends it
            self.cancel(gone)
            batch = batch.without(gone)
            if not batch.items:
                return None
        erasure = account.processor.erasure
        if erasure is None or batch.kind in QUIET or not batch.items:
            return batch
        if min(stamp_of(item) for item in batch.items) >= mark:
            return batch  # the usual batch: nothing was deleted since its work began
        caught: list[Sendable] = []
        for item in batch.items:
            stamp = stamp_of(item)
            if stamp >= mark:
                continue
            judge = partial(
                erasure.late, item.records, profile_identifiers(item.profile), mark, stamp
            )
            verdict = await until_available(
                judge, STATE, waiting=parts.health.waiting, stop=parts.stop.asked
            )
            if verdict is None:
                continue
            caught.append(item)
            for record in verdict.newer:  # it raced the deletion: processed again after it
                if record.again > stamp:
                    continue  # already sent to be processed anew: what it made before is void
                record.again = mark
                parts.ledger.expect(record)
                waits = tuple(verdict.waits)
                account.gate.hold_call(waits, partial(self._again, record))
        if not caught:
            return batch
        await account.gate.answered(caught)  # an action's turn ends; a list change stops waiting
        parts.ledger.settle(caught, Outcome.FILTERED)
        rest = batch.without(caught)
        return rest if rest.items else None

    async def expire(self, items: Sequence[Sendable], error: StreamError) -> None:
        """Parked items past the account's bound: dead letters with `error`."""
        await self._account.gate.answered(items, items)
        self._parts.ledger.fail(items, error, "deliver")

    def cancel(self, items: Sequence[Sendable]) -> None:
        """Items of a revoked partition: nothing more is attempted here (counted)."""
        metrics.ITEMS_CANCELLED.labels(items[0].kind).inc(len(items))
        self._account.gate.dropped(items)
        self._parts.ledger.settle(items, Outcome.CANCELLED)


def parks(error: BaseException) -> bool:
    """Whether a failure is its account's trouble rather than its items' (an outage or 429s
    that outlasted the retries): parked with an accounts file, not dead-lettered."""
    return isinstance(error, KlaviyoError) and error.retriable
