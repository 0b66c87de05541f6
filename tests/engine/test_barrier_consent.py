"""The per-record barrier with delete calls and consent options built to hurt: no exception
leaves the per-record stage, and every record is finished, in the send stage, or in the gate
(a dead letter, an item to send, or an action waiting for its turn): none is dropped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.barrier import JSON_TEXT, TEXT, TIMESTAMPS, encoded, run_stage

CHANNELS = st.sampled_from(["email", "sms", "fax", "", 7])
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "subscribe": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"email": st.booleans(), "sms": st.booleans(),
                              "list_id": st.one_of(TEXT, st.integers())}  # fmt: skip
            ),
            st.just("yes"),
        ),
        "unsubscribe": st.one_of(st.lists(CHANNELS, max_size=3), CHANNELS),
        "lists": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"add": st.lists(TEXT, max_size=3),
                              "remove": st.lists(TEXT, max_size=3)}  # fmt: skip
            ),
            st.lists(TEXT),
        ),
        "suppress": st.one_of(st.booleans(), st.none(), st.just("true")),
        "unset": st.lists(TEXT, max_size=2),
    },
)
GOOD_OPTIONS = st.sampled_from([
    {"subscribe": {"email": True, "sms": True, "list_id": "L1"}},
    {"unsubscribe": ["email", "sms"], "suppress": True},
    {"lists": {"add": ["L1"], "remove": ["L2"]}, "suppress": False},
])  # fmt: skip
HOSTILE = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track", "group", "delete", "delete"]),
        "messageId": st.sampled_from(["m1", "m2", "m3"]) | st.uuids().map(str),
        "timestamp": TIMESTAMPS,
    },
    optional={
        "userId": TEXT,
        "anonymousId": TEXT,
        "groupId": TEXT,
        "event": TEXT,
        "traits": JSON_TEXT,
        "context": JSON_TEXT,
        "integrations": OPTIONS.map(lambda o: json.dumps({"Klaviyo": o})),
    },
)
# calls of a few real persons, asking real changes (and deleting them), so actions are made
LIKELY = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track", "group", "delete"]),
        "messageId": st.sampled_from(["m1", "m2", "m3"]) | st.uuids().map(str),
        "timestamp": st.sampled_from(
            ["2026-05-01T10:00:00Z", "2026-05-01T09:00:00Z", "2026-05-01T11:00:00Z"]
        ),
        "userId": st.sampled_from(["u1", "u2"]),
        "event": st.just("Signed Up"),
        "groupId": st.just("acme"),
        "traits": st.sampled_from([
            '{"email": "ann@example.com", "phone": "+14155550100"}', '{"email": "bo@example.com"}',
            "{}",
        ]),  # fmt: skip
    },
    optional={"integrations": GOOD_OPTIONS.map(lambda o: json.dumps({"Klaviyo": o}))},
)
CALLS = st.one_of(LIKELY, HOSTILE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CALLS, min_size=1, max_size=8))
def test_no_record_is_lost_to_a_delete_call_or_a_consent_option(
    calls: list[dict[str, Any]],
) -> None:
    values = [v for v in (encoded(c) for c in calls) if v is not None]
    values.append(b"\xc3\x01garbage")  # and one record nobody could read
    parts, records, letters = asyncio.run(run_stage(values))
    assert len(records) == len(values)
    waiting: dict[int, int] = {}
    ledger, sender, gate = parts.ledger, parts.sender, parts.gate
    pending = [item for lane in sender.lanes.values() for b in lane.drain() for item in b.items]
    for item in pending + gate.waiting():
        for record in item.records:
            waiting[id(record)] = waiting.get(id(record), 0) + 1
    copies = {id(c): r for r in records for c in r.waiting or ()}
    for record in records:
        if id(record) in copies:
            assert record.open == 1 and copies[id(record)].open > 0
        elif record.open:
            assert waiting.get(id(record)) == record.open, "a record neither finished nor sent"
        else:
            assert id(record) not in waiting
    assert ledger.pending == sum(1 for r in records if r.open)
    assert all(reason.strip() for reason in letters.reasons)
