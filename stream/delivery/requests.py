"""Klaviyo requests as the deliver stage makes them: paced, bounded in flight, measured, retried.

`Wire.attempt` sends one attempt: paced by the rate-limit governor (unless it spends a slot
already reserved), counted against `max_in_flight` only while it is on the wire, measured.
`Requests.send` retries it as `stream.delivery.reactions` says, bounded by the retry policy.

A batch's requests go through its `BatchRequests` (`Requests.of`, made as the batch is sent and
handed to whatever sends for it: bodies, import-job polls, merges, action lookups): the first
of them to the endpoint whose slot the send stage reserved (`Batch.reserved`) spends that slot,
and no retry is attempted once every record of one of its items belongs to a partition revoked
past the drain bound (`PartitionMoved`). `Requests.request` is a request outside any batch
(the catalog stage, the operator tools).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from stream.completion.ledger import Item, ended
from stream.core.errors import KlaviyoError
from stream.core.retry import RetryPolicy
from stream.delivery.reactions import Verdict, react, stop_error
from stream.klaviyo.client import KlaviyoClient, Response
from stream.klaviyo.governor import Governor
from stream.telemetry import metrics

log = logging.getLogger(__name__)


class PartitionMoved(Exception):
    """A retry met an item of a partition revoked past the drain bound (the deliverer catches
    it and sends the batch's other items anew)."""


class Wire:
    """One attempt of one request: paced, bounded in flight, measured."""

    def __init__(self, client: KlaviyoClient, governor: Governor, max_in_flight: int) -> None:
        self._client = client
        self._governor = governor
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def attempt(
        self, method: str, path: str, body: Any, budget: str, *, reserved: bool = False
    ) -> Response:
        """Send once under `budget` (on a slot taken from the governor unless `reserved`);
        raises the `KlaviyoError` the client raises."""
        if not reserved:
            waited = await self._governor.acquire(budget)
            if waited > 0:
                metrics.GOVERNOR_WAIT.labels(budget).inc(waited)
        status = 0
        async with self._in_flight:
            metrics.IN_FLIGHT_REQUESTS.inc()
            started = time.perf_counter()
            try:
                response = await self._client.request(method, path, body)
                status = response.status
                self._governor.observe(budget, response.headers)
                return response
            except KlaviyoError as exc:
                status = exc.status
                raise
            finally:
                metrics.IN_FLIGHT_REQUESTS.dec()
                cls = metrics.status_class(status)
                metrics.BATCHES_SENT.labels(budget, cls).inc()
                metrics.REQUEST_SECONDS.labels(budget, cls).observe(time.perf_counter() - started)


class Watch(Protocol):
    """Told how the account's requests fare (`stream.engine.parking.Parking`)."""

    def trouble(self, error: KlaviyoError) -> None:
        """An answer that stops or is retried: a refused key or revision, 5xx, 429, none."""

    def fine(self) -> None:
        """An answer that says the account works (accepted, or one request's own 4xx)."""


class Requests:
    """Paced, retried requests; raises the last error when out of attempts or time (with
    `attempts` and `first_attempt` set for the dead letter), or the error that stops the
    service (`FatalDeliveryError`, `RevisionRefused`). `watch` hears every answer."""

    def __init__(
        self,
        client: KlaviyoClient,
        governor: Governor,
        retry: RetryPolicy,
        max_in_flight: int,
        watch: Watch | None = None,
    ) -> None:
        self._wire = Wire(client, governor, max_in_flight)
        self._governor = governor
        self._retry = retry
        self._watch = watch

    async def request(
        self, method: str, path: str, body: Any = None, *, budget: str
    ) -> Response:
        """One request outside any batch."""
        return await self.send(method, path, body, budget, None)

    def of(self, items: Sequence[Item], reserved: str | None) -> BatchRequests:
        """The requests of a batch of `items` whose first request to `reserved` has its slot."""
        return BatchRequests(self, items, reserved)

    async def send(
        self, method: str, path: str, body: Any, budget: str, batch: BatchRequests | None
    ) -> Response:
        """One request, retried; for `batch` when it is one of a batch's."""
        started, first_attempt = time.monotonic(), time.time()
        attempt = 0
        while True:
            reserved = batch is not None and batch.spend(budget)
            watch = self._watch
            try:
                response = await self._wire.attempt(method, path, body, budget, reserved=reserved)
            except KlaviyoError as exc:
                exc.attempts, exc.first_attempt = attempt + 1, first_attempt
                error = exc
            else:
                if watch is not None:
                    watch.fine()
                return response
            reaction = react(error)
            if watch is not None:
                if reaction.verdict is Verdict.FAIL:
                    watch.fine()
                else:
                    watch.trouble(error)
            if reaction.verdict is Verdict.STOP:
                raise stop_error(error) from None
            if reaction.throttle is not None:
                metrics.RATE_LIMITED.labels(budget).inc()
                self._governor.throttled(budget, reaction.throttle)
            if reaction.verdict is Verdict.FAIL:
                raise error
            delay = self._retry.delay(attempt, error)
            attempt += 1
            if self._retry.gives_up(attempt, started, delay):
                raise error
            if batch is not None and batch.moved():
                raise PartitionMoved  # no new attempt for work of a revoked partition
            metrics.RETRIES.labels(budget, type(error).__name__).inc()
            log.info("retrying", extra={"endpoint": budget, "error": str(error), "delay": delay})
            if reaction.throttle is None:  # throttled: the governor holds the endpoint instead
                await asyncio.sleep(delay)


class BatchRequests:
    """The requests of one batch: they spend the send slot reserved for it, once, and stop
    being retried when the batch's partitions moved on (see the module note)."""

    def __init__(self, requests: Requests, items: Sequence[Item], reserved: str | None) -> None:
        self._requests = requests
        self._items = items
        self._reserved = reserved

    async def request(
        self, method: str, path: str, body: Any = None, *, budget: str
    ) -> Response:
        """One of the batch's requests, paced and retried (a `Requester`)."""
        return await self._requests.send(method, path, body, budget, self)

    def spend(self, budget: str) -> bool:
        """Whether a request under `budget` takes the reserved slot (then it is spent)."""
        if budget != self._reserved:
            return False
        self._reserved = None
        return True

    def moved(self) -> bool:
        """Whether an item's partitions were all revoked past the drain bound (`ended`)."""
        return any(ended(item) for item in self._items)
