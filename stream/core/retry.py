"""One retry policy for everything that is tried again: Klaviyo requests, import-job polls, the
state store, the Schema Registry and dead-letter writes.

Exponential backoff with jitter, as Klaviyo's own SDK does: 0.5 s × 1.5ⁿ ± 50 %, each wait capped
at 30 s. A `Retry-After` from Klaviyo replaces the computed wait. Klaviyo requests give up after
12 attempts or 300 s (then a dead letter); dependencies that say nothing about a record (state
store, registry, dead-letter topic) are retried for as long as it takes: the service waits, it
neither stops nor loses; a stop (SIGTERM, SIGINT) ends such a wait (`Interrupted`), leaving
what waited unfinished for the next run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from stream.core.errors import Interrupted, RateLimited, StreamError, Unavailable
from stream.telemetry import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between attempts, and when a bounded retry gives up."""

    base_seconds: float = 0.5
    factor: float = 1.5
    max_delay_seconds: float = 30.0
    max_total_seconds: float = 300.0
    max_attempts: int = 12

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 0)."""
        if isinstance(error, RateLimited):
            return error.retry_after + random.uniform(0, 0.25)  # spread the herd a little
        base = min(self.base_seconds * self.factor**attempt, self.max_delay_seconds)
        return base * random.uniform(0.5, 1.5)

    def gives_up(self, attempt: int, started: float, delay: float) -> bool:
        """True when attempt number `attempt` (from 1) was the last one allowed, or waiting
        `delay` more would pass the time budget (`started` on the monotonic clock)."""
        spent = time.monotonic() - started
        return attempt >= self.max_attempts or spent + delay > self.max_total_seconds


DEFAULT = RetryPolicy()


Waiting = Callable[[str | None], None]  # told what is waited for (None: nothing any more)


@overload
async def until_available(
    action: Callable[[], Awaitable[T]],
    what: str,
    policy: RetryPolicy = ...,
    waiting: Waiting | None = ...,
    stop: asyncio.Event | None = ...,
) -> T: ...


@overload
async def until_available(
    action: Callable[[], T],
    what: str,
    policy: RetryPolicy = ...,
    waiting: Waiting | None = ...,
    stop: asyncio.Event | None = ...,
) -> T: ...


async def until_available(
    action: Callable[[], Any],
    what: str,
    policy: RetryPolicy = DEFAULT,
    waiting: Waiting | None = None,
    stop: asyncio.Event | None = None,
) -> Any:
    """Run `action()` (awaiting it if it is a coroutine) until it does not raise `Unavailable`;
    wait with backoff in between.

    For dependencies whose failure says nothing about the record at hand (state store, Schema
    Registry, dead-letter topic). Each failure is logged and counted
    (`klaviyo_stream_dependency_errors_total{dependency=what}`); a non-retriable `Unavailable`
    is retried too, at the longest wait (it may be a full disk an operator frees), so nothing
    is lost and the stalled partition shows in its metrics. `waiting` (the service's health)
    hears what is waited for while it lasts. Once `stop` is set, a failure is not waited on:
    `Interrupted` is raised (at once, or as soon as `stop` is set during the wait).
    """
    attempt = 0
    while True:
        try:
            result = action()
            if inspect.isawaitable(result):
                result = await result
            if attempt and waiting is not None:
                waiting(None)
            return result
        except Unavailable as exc:
            if waiting is not None:
                waiting(what)
            metrics.DEPENDENCY_ERRORS.labels(what).inc()
            delay = policy.delay(attempt if exc.retriable else 99)
            attempt += 1
            if stop is not None and stop.is_set():
                raise Interrupted(f"stopped while waiting for the {what}") from None
            log.warning(
                "dependency unavailable, waiting",
                extra={"dependency": what, "error": _text(exc), "delay": round(delay, 2)},
            )
            if stop is None:
                await asyncio.sleep(delay)
            elif await _set_within(stop, delay):
                raise Interrupted(f"stopped while waiting for the {what}") from None


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _text(exc: StreamError) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
