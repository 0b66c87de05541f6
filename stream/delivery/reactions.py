"""What the deliver stage does about each error Klaviyo answers: one table, `react`.

| error                                             | reaction                                  |
|---------------------------------------------------|-------------------------------------------|
| `Unauthorized` (401/403)                          | STOP: the key is refused                  |
| `InvalidRequest` naming a header or query         | STOP: a wrong revision (or public key);   |
| parameter and no field (no JSON pointer)          | every request would be refused alike      |
| `RateLimited` (429)                               | RETRY, throttled: the governor holds the  |
|                                                   | endpoint until Retry-After (no backoff)   |
| any other retriable error (5xx, timeouts, drops)  | RETRY after a backoff                     |
| anything else (4xx)                               | FAIL: the request's items fail            |

STOP raises `stop_error(error)` (the service stops, nothing is dead-lettered); RETRY is bounded
by the retry policy, after which the error is raised as it is, as FAIL raises it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from stream.core.errors import (
    FatalDeliveryError,
    InvalidRequest,
    KlaviyoError,
    RateLimited,
    RevisionRefused,
    Unauthorized,
)


class Verdict(Enum):
    """What the caller of a failed request does."""

    STOP = "stop"  # stop the service: no request succeeds until the configuration changes
    RETRY = "retry"  # try again (bounded by the retry policy)
    FAIL = "fail"  # give up: the request's items fail with this error


@dataclass(frozen=True, slots=True)
class Reaction:
    """A verdict, and for a 429 how long the governor holds the endpoint before the retry."""

    verdict: Verdict
    throttle: float | None = None  # seconds (Retry-After); the retry waits for no backoff


STOP = Reaction(Verdict.STOP)
RETRY = Reaction(Verdict.RETRY)
FAIL = Reaction(Verdict.FAIL)


def react(error: KlaviyoError) -> Reaction:
    """The table above: what to do about `error`."""
    if isinstance(error, Unauthorized):
        return STOP
    if isinstance(error, InvalidRequest) and error.parameters and not error.pointers:
        return STOP
    if isinstance(error, RateLimited):
        return Reaction(Verdict.RETRY, throttle=error.retry_after)
    return RETRY if error.retriable else FAIL


def stop_error(error: KlaviyoError) -> FatalDeliveryError | RevisionRefused:
    """The error that stops the service, for an `error` whose verdict is STOP."""
    if isinstance(error, Unauthorized):
        return FatalDeliveryError(str(error))
    names = ", ".join(error.parameters)
    return RevisionRefused(
        f"Klaviyo refused the request's {names} ({error}): check KLAVIYO_REVISION"
        " (or KLAVIYO_PUBLIC_KEY in client mode); nothing was dead-lettered"
    )
