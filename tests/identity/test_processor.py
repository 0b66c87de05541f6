"""Identity rules on one process: linking, holding anonymous calls, alias, trait order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stream.completion.ledger import Outcome
from stream.core.calls import Call, Record, normalize
from stream.engine.process import Processor
from stream.identity.resolver import IdentityResolver
from stream.rules.route import Router
from stream.state import StateStore, open_store


@pytest.fixture
def store() -> Iterator[StateStore]:
    s = open_store("sqlite:///:memory:")
    yield s
    s.close()


def processor(store: StateStore, email_first: bool = True) -> Processor:
    return Processor(Router(), IdentityResolver(store, email_first=email_first), "US")


def call(kind: str, n: int, **fields: Any) -> tuple[Call, Record]:
    record = {"messageId": f"m-{n}", "timestamp": f"2026-05-01T10:00:{n:02d}+00:00", **fields}
    if kind == "track":
        record.setdefault("event", "Viewed Product")
    return normalize(kind, record), Record("t", 0, n)


def test_identifiers_seen_together_are_one_person_on_every_later_event(store: StateStore) -> None:
    p = processor(store)
    p.process(
        *call("identify", 1, userId="u1", traits={"email": " Ann@X.io", "phone": "4155550123"})
    )
    [item] = p.process(*call("track", 2, userId="u1")).items
    assert item.profile == {
        "email": "ann@x.io",
        "phone_number": "+14155550123",
        "external_id": "u1",
    }


def test_use_email_as_identifier_off_puts_external_id_first(store: StateStore) -> None:
    p = processor(store, email_first=False)
    [item] = p.process(*call("identify", 1, userId="u1", traits={"email": "a@x.io"})).items
    assert list(item.profile)[:2] == ["external_id", "email"]


def test_anonymous_calls_are_held_then_released_on_the_identified_profile(
    store: StateStore,
) -> None:
    p = processor(store)
    held = p.process(*call("track", 1, anonymousId="anon-1"))
    assert held.outcome is Outcome.HELD and held.items == []
    result = p.process(
        *call("identify", 2, userId="u1", anonymousId="anon-1", traits={"email": "a@x.io"})
    )
    assert [i.kind for i in result.items] == ["profiles"]
    events = result.released
    assert [e.event["unique_id"] for e in events if e.event] == ["m-1"]
    assert events[0].profile == {"email": "a@x.io", "external_id": "u1"}
    released = events[0].records[0]
    assert released.generation is None and released.held_id  # finished by settling its entry
    assert store.held_count() == 1, "a released call stays stored until it is delivered"


def test_alias_links_a_second_device_and_releases_its_calls(store: StateStore) -> None:
    p = processor(store)
    p.process(*call("identify", 1, userId="u1", traits={"email": "a@x.io"}))
    assert p.process(*call("track", 2, anonymousId="phone-7")).outcome is Outcome.HELD
    released = p.process(*call("alias", 3, previousId="phone-7", userId="u1")).released
    assert [i.event["unique_id"] for i in released if i.event] == ["m-2"]
    [later] = p.process(*call("track", 4, anonymousId="phone-7")).items
    assert later.profile["email"] == "a@x.io"


def test_out_of_order_identify_does_not_overwrite_a_newer_trait(store: StateStore) -> None:
    p = processor(store)
    p.process(*call("identify", 5, userId="u1", traits={"email": "a@x.io", "plan": "pro"}))
    [item] = p.process(
        *call("identify", 3, userId="u1", traits={"plan": "trial", "seats": 2})
    ).items
    assert item.profile["properties"] == {"plan": "pro", "seats": 2}


def test_a_call_naming_nobody_is_a_record_error(store: StateStore) -> None:
    from stream.core.errors import RecordError

    with pytest.raises(RecordError):
        processor(store).process(*call("track", 1))
