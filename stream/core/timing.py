"""One time policy for every call: which value of an identifier or trait is the latest.

A call's time is its own `timestamp` (naive times read as UTC, everywhere). Every call's time is
checked as Klaviyo checks event times (after 1990, at most a year ahead): a call outside that is
dead-lettered before it can change the identity graph. For ordering, the call time is capped at
the moment the record was read plus `MAX_CLOCK_SKEW_SECONDS`: a device whose clock says 2099
never pins an email or a trait for good. (The Kafka timestamp is no safer a reference: with
CreateTime the producer sets it too.)
"""

from __future__ import annotations

from datetime import UTC, datetime

from stream.core.calls import Call
from stream.klaviyo.mapping import event_time


def check_time(call: Call) -> None:
    """Raise `MappingError` when the call's timestamp is not one Klaviyo accepts."""
    event_time(call.timestamp)


def order_time(call: Call, read_at: float, skew: float) -> float:
    """The call's time for ordering (Unix seconds): its own, capped at `read_at + skew`. The
    timestamp was checked already (`check_time`)."""
    moment = datetime.fromisoformat(call.timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(moment.timestamp(), read_at + skew)


def event_seconds(event: dict[str, object]) -> float:
    """A mapped event's `time` (ISO-8601, checked when it was mapped) as Unix seconds; 0 when
    it has none."""
    text = event.get("time")
    if not isinstance(text, str):
        return 0.0
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
