"""Deliver stage: send batches to Klaviyo with bounded concurrency, retries and dead letters.

Every record of a batch ends in exactly one of two places: accepted by Klaviyo, or in the
dead-letter topic with the reason. Only then is it reported done (and its offset may move).
- retriable answers (429, 5xx, timeouts, dropped connections): exponential backoff with
  jitter (Klaviyo SDK style, 0.5 s × 1.5ⁿ ± 50 %), `Retry-After` honoured, bounded in time;
- a 400 on a bulk request: the entries its JSON pointers name are dead-lettered and the rest
  resent; a 400 without a usable pointer is bisected until the bad record is alone;
- other 4xx: dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from stream import metrics
from stream.batch import Batch, Item
from stream.calls import Source
from stream.klaviyo import mapping
from stream.klaviyo.client import (
    CLIENT_EVENTS,
    CLIENT_EVENTS_BULK,
    CLIENT_PROFILES,
    EVENTS,
    EVENTS_BULK,
    PROFILE_IMPORT,
    PROFILES_BULK,
    KlaviyoClient,
    Response,
)
from stream.klaviyo.errors import (
    DuplicateProfile,
    InvalidRequest,
    KlaviyoClientError,
    KlaviyoError,
    RateLimited,
    Unauthorized,
)
from stream.klaviyo.governor import Governor
from stream.klaviyo.importjob import import_failures
from stream.klaviyo.merge import merge_duplicate

log = logging.getLogger(__name__)

MERGE_ATTEMPTS = 3
SMALL_PROFILE_BATCH = 3  # up to this many profiles go one by one to /api/profile-import
_BULK_POINTER = re.compile(
    r"^/data/attributes/events-bulk-create/data/(\d+)(?:/attributes/events/data/(\d+))?"
)

Done = Callable[[list[Source], bool], None]  # (sources, delivered: False = dead-lettered)
DeadLetter = Callable[[list[Source], BaseException, str, int, float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep trying a retriable failure before dead-lettering."""

    base_seconds: float = 0.5
    factor: float = 1.5
    max_delay_seconds: float = 30.0
    max_total_seconds: float = 300.0
    max_attempts: int = 12

    def delay(self, attempt: int, error: KlaviyoError) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        if isinstance(error, RateLimited):
            return error.retry_after + random.uniform(0, 0.25)  # spread the herd a little
        base = min(self.base_seconds * self.factor**attempt, self.max_delay_seconds)
        return base * random.uniform(0.5, 1.5)


class FatalDeliveryError(Exception):
    """Delivery cannot go on for any record (the API key was refused): stop the service."""


class Deliverer:
    """Sends batches; reports every record as done once delivered or dead-lettered."""

    def __init__(
        self,
        client: KlaviyoClient,
        on_done: Done,
        dead_letter: DeadLetter,
        *,
        max_in_flight: int = 8,
        retry: RetryPolicy | None = None,
        governor: Governor | None = None,
        client_mode: bool = False,
    ) -> None:
        self._client = client
        self._on_done = on_done
        self._dead_letter = dead_letter
        self._slots = asyncio.Semaphore(max_in_flight)
        self._retry = retry or RetryPolicy()
        self._governor = governor or Governor()
        self._client_mode = client_mode  # public key: /client/ endpoints, one profile a request

    async def send(self, batch: Batch) -> None:
        """Deliver one batch (waits for a free in-flight slot)."""
        async with self._slots:
            if self._client_mode:
                await self._client_side(batch.items)
            elif batch.kind == "events":
                await self._events(batch.items)
            else:
                await self._profiles(batch.items)

    # client-side mode -------------------------------------------------------------------

    async def _client_side(self, items: list[Item]) -> None:
        """/client/ endpoints: profiles one by one, events one by one or bulk per profile."""
        for group in _group(items):
            first = group[0]
            if first.event is None:
                for item in group:
                    body = mapping.profile_import_body(item.profile)
                    await self._deliver(CLIENT_PROFILES, body, [item])
            elif len(group) == 1:
                body = mapping.single_event_body(first.event, first.profile)
                await self._deliver(CLIENT_EVENTS, body, group)
            else:
                events = [i.event for i in group if i.event is not None]
                body = mapping.client_bulk_events_body(first.profile, events)
                try:
                    await self._post(CLIENT_EVENTS_BULK, body, len(group))
                except InvalidRequest as exc:
                    await self._bisect(group, exc, self._client_side)
                    continue
                except KlaviyoError as exc:
                    await self._fail(group, exc, "deliver")
                    continue
                self._done(group, CLIENT_EVENTS_BULK)

    # events -----------------------------------------------------------------------------

    async def _events(self, items: list[Item]) -> None:
        if not items:
            return
        if len(items) == 1:
            item = items[0]
            assert item.event is not None
            body = mapping.single_event_body(item.event, item.profile)
            await self._deliver(EVENTS, body, items)
            return
        groups = _group(items)
        body = mapping.bulk_events_body(
            [(g[0].profile, [orjson.Fragment(i.encoded) for i in g]) for g in groups]
        )
        try:
            await self._post(EVENTS_BULK, body, len(items))
        except InvalidRequest as exc:
            bad = _bad_entries(exc, groups)
            if bad:
                await self._fail(bad, exc, "deliver")
                await self._events([i for i in items if not any(i is b for b in bad)])
            else:
                await self._bisect(items, exc, self._events)
            return
        except KlaviyoError as exc:
            await self._fail(items, exc, "deliver")
            return
        self._done(items, EVENTS_BULK)

    # profiles ---------------------------------------------------------------------------

    async def _profiles(self, items: list[Item]) -> None:
        if len(items) <= SMALL_PROFILE_BATCH:
            for item in items:
                await self._deliver(
                    PROFILE_IMPORT, mapping.profile_import_body(item.profile), [item]
                )
            return
        body = mapping.bulk_profiles_body([i.profile for i in items])
        try:
            response = await self._post(PROFILES_BULK, body, len(items))
        except InvalidRequest as exc:
            await self._bisect(items, exc, self._profiles)
            return
        except KlaviyoError as exc:
            await self._fail(items, exc, "deliver")
            return
        try:
            failures = await import_failures(
                self._client, response, [i.profile for i in items], self._retry.max_total_seconds
            )
        except Unauthorized as exc:
            raise FatalDeliveryError(str(exc)) from None
        except KlaviyoError as exc:  # the job's outcome is unknowable: replay is a safe upsert
            await self._fail(items, exc, "import-job")
            return
        failed = {index for index in failures if index < len(items)}
        for index in sorted(failed):
            if failures[index].code == "duplicate_profile":
                # a split person: the single upsert answers 409 synchronously and heals it
                body = mapping.profile_import_body(items[index].profile)
                await self._deliver(PROFILE_IMPORT, body, [items[index]])
            else:
                await self._fail([items[index]], failures[index], "import-job")
        self._done([item for i, item in enumerate(items) if i not in failed], PROFILES_BULK)

    # shared -----------------------------------------------------------------------------

    async def _deliver(self, endpoint: str, body: dict[str, Any], items: list[Item]) -> None:
        try:
            await self._upsert_healing(endpoint, body, items[0].profile, len(items))
        except KlaviyoError as exc:
            await self._fail(items, exc, "deliver")
            return
        self._done(items, endpoint)

    async def _upsert_healing(
        self, endpoint: str, body: dict[str, Any], profile: dict[str, Any], records: int
    ) -> None:
        """POST; on 409 duplicate_profile (one person split over two Klaviyo profiles) merge
        the duplicate into the profile Klaviyo matched and try again (a few times: another
        consumer may be healing the same person)."""
        for _attempt in range(MERGE_ATTEMPTS):
            try:
                await self._post(endpoint, body, records)
                return
            except DuplicateProfile as exc:
                if exc.duplicate_profile_id is None:
                    raise
                # KlaviyoClientError: merged meanwhile by another consumer; the next upsert tells
                with contextlib.suppress(KlaviyoClientError):
                    await merge_duplicate(self._client, profile, exc.duplicate_profile_id)
        await self._post(endpoint, body, records)

    async def _bisect(
        self, items: list[Item], exc: KlaviyoError, send: Callable[[list[Item]], Awaitable[None]]
    ) -> None:
        if len(items) == 1:
            await self._fail(items, exc, "deliver")
            return
        half = len(items) // 2
        await send(items[:half])
        await send(items[half:])

    async def _post(self, endpoint: str, body: dict[str, Any], records: int) -> Response:
        """POST with retries on retriable errors; raises the last error when out of budget."""
        started, first_attempt = time.monotonic(), time.time()
        attempt = 0
        while True:
            waited = await self._governor.acquire(endpoint)
            if waited > 0:
                metrics.GOVERNOR_WAIT.labels(endpoint).inc(waited)
            metrics.IN_FLIGHT_REQUESTS.inc()
            t0 = time.perf_counter()
            status = 0
            try:
                response = await self._client.post(endpoint, body)
                status = response.status
                self._governor.observe(endpoint, response.headers)
                metrics.BATCH_SIZE.labels(endpoint).observe(records)
                return response
            except KlaviyoError as exc:
                status = exc.status
                exc.attempts, exc.first_attempt = attempt + 1, first_attempt  # for dead letters
                if isinstance(exc, Unauthorized):
                    raise FatalDeliveryError(str(exc)) from None
                if isinstance(exc, RateLimited):
                    metrics.RATE_LIMITED.labels(endpoint).inc()
                    self._governor.throttled(endpoint, exc.retry_after)
                if not exc.retriable:
                    raise
                delay = self._retry.delay(attempt, exc)
                # after a 429 the governor holds the endpoint until Retry-After: no extra sleep
                pause = 0.0 if isinstance(exc, RateLimited) else delay
                attempt += 1
                spent = time.monotonic() - started
                if (
                    attempt >= self._retry.max_attempts
                    or spent + delay > self._retry.max_total_seconds
                ):
                    raise
                metrics.RETRIES.labels(endpoint, type(exc).__name__).inc()
                log.info(
                    "retrying", extra={"endpoint": endpoint, "error": str(exc), "delay": delay}
                )
            finally:
                metrics.IN_FLIGHT_REQUESTS.dec()
                cls = metrics.status_class(status)
                metrics.BATCHES_SENT.labels(endpoint, cls).inc()
                metrics.REQUEST_SECONDS.labels(endpoint, cls).observe(time.perf_counter() - t0)
            await asyncio.sleep(pause)

    def _done(self, items: list[Item], endpoint: str) -> None:
        metrics.RECORDS_SENT.labels(endpoint).inc(len(items))
        self._on_done([s for i in items for s in i.sources], True)

    async def _fail(self, items: list[Item], exc: BaseException, stage: str) -> None:
        sources = [s for i in items for s in i.sources]
        attempts = exc.attempts if isinstance(exc, KlaviyoError) else 1
        first = exc.first_attempt if isinstance(exc, KlaviyoError) else None
        await self._dead_letter(sources, exc, stage, attempts, first or time.time())
        self._on_done(sources, False)


def _group(items: list[Item]) -> list[list[Item]]:
    """Items grouped per profile, groups in first-seen order (the bulk request's order)."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.group_key, []).append(item)
    return list(groups.values())


def _bad_entries(exc: KlaviyoClientError, groups: list[list[Item]]) -> list[Item]:
    """Items named by the 400's pointers: one event (`…/events/data/<j>`) or a whole group."""
    bad: list[Item] = []
    for pointer in exc.pointers:
        match = _BULK_POINTER.match(pointer)
        if match is None:
            return []  # a pointer we cannot place: let the caller bisect
        g = int(match.group(1))
        if g >= len(groups):
            return []
        if match.group(2) is None:
            bad.extend(groups[g])
        elif int(match.group(2)) < len(groups[g]):
            bad.append(groups[g][int(match.group(2))])
    unique: list[Item] = []
    for item in bad:
        if not any(item is u for u in unique):
            unique.append(item)
    return unique
