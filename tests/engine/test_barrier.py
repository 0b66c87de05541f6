"""Case 4 of the completion-ledger issue: one record never stops the service.

Records built to hurt (JSON nested past every encoder's limit, numbers beyond 64 bits, huge and
odd unicode strings, timestamps at the calendar's edge, a 64 KB crafted email, wrong types,
repeated message ids) go through the service's real per-record stage (decode → route → dedup →
transform → identity → map → batch) with a real SQLite state store. No exception may leave it,
and every record must end delivered-to-be (its items waiting in a lane), filtered, a duplicate,
held, absorbed or dead-lettered with a reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stream.core.identifiers import normalize_email
from tests.support.barrier import JSON_TEXT, TEXT, TIMESTAMPS, encoded, run_stage

CALLS = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track", "page", "screen", "alias", "group"]),
        "messageId": st.sampled_from(["m1", "m2", "m3"]) | st.uuids().map(str),
        "timestamp": TIMESTAMPS,
    },
    optional={
        "userId": TEXT,
        "anonymousId": TEXT,
        "previousId": TEXT,
        "groupId": TEXT,
        "event": TEXT,
        "name": TEXT,
        "traits": JSON_TEXT,
        "properties": JSON_TEXT,
        "context": JSON_TEXT,
    },
)


@given(st.lists(CALLS, min_size=1, max_size=8))
def test_no_exception_leaves_the_per_record_stage(calls: list[dict[str, Any]]) -> None:
    values = [v for v in (encoded(c) for c in calls) if v is not None]
    values.append(b"\xc3\x01garbage")  # and one record nobody could read
    parts, records, letters = asyncio.run(run_stage(values))
    ledger, sender = parts.ledger, parts.sender
    assert len(records) == len(values)
    waiting: dict[int, int] = {}
    for lane in sender.lanes.values():
        for batch in lane.drain():
            for record in batch.records:
                waiting[id(record)] = waiting.get(id(record), 0) + 1
    copies = {id(c): r for r in records for c in r.waiting or ()}
    for record in records:
        if id(record) in copies:  # a copy of an id in flight: finishes with its original
            assert record.open == 1 and copies[id(record)].open > 0
        elif record.open:
            assert waiting.get(id(record)) == record.open, "a record neither finished nor sent"
        else:
            assert id(record) not in waiting
    assert ledger.pending == sum(1 for r in records if r.open)
    assert letters.reasons, "the unreadable record must be dead-lettered"
    assert all(reason.strip() for reason in letters.reasons)


def test_a_crafted_email_is_refused_by_its_length_before_any_pattern() -> None:
    """A backtracking check took seconds on this 64 KB input: it must be refused by length."""
    from stream.core.errors import InvalidIdentifier

    crafted = "a@" + "a." * 32_000 + "@"
    try:
        normalize_email(crafted)
    except InvalidIdentifier as exc:
        assert "longer than 254" in str(exc)
    else:
        raise AssertionError("a 64 KB email was accepted")
    assert normalize_email(" Ann@Example.COM ") == "ann@example.com"
    for bad in ("a@b", "@b.c", "a@.c", "a@b.", "a b@c.d", "a@b@c.d", "a@b.\tc"):
        try:
            normalize_email(bad)
        except InvalidIdentifier:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_long_event_names_never_grow_the_routing_cache() -> None:
    from stream.core.calls import Call
    from stream.rules.route import EventDefinition, Router, Selector

    router = Router(definitions=(EventDefinition(Selector(type="track", pattern="*")),))
    for n in range(200):
        call = Call("track", f"m{n}", "2026-01-01T00:00:00Z", event="e" * 10_000 + str(n))
        assert router.reason_to_skip(call) is None
    router.reason_to_skip(Call("track", "m", "2026-01-01T00:00:00Z", event="Short"))
    assert [name for _, name in router._cache] == ["Short"]
