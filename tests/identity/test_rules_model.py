"""The identity graph under random traffic (hypothesis stateful), on both state backends.

A few people with their own userId, email and phone share a few browsers (anonymousIds never
reset between logins), change their email or phone now and then, and send calls from devices
whose clocks run months ahead or behind. After every call the graph must hold:

- no two people with different external_ids are ever one person;
- every call is attributed to the person of its strongest identifier (its profile carries that
  person's external_id);
- each person's email and phone are the latest by the time policy (call time, capped at the
  moment it is read plus the allowed skew; a call from the far future is a dead letter).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from stream.core.calls import Record, normalize
from stream.core.errors import MappingError
from stream.engine.process import Processor
from stream.identity.resolver import IdentityResolver
from stream.rules.route import Router
from stream.state import StateStore, open_store

PEOPLE = 3
DEVICES = 2
SKEW = 600.0
# how far a device's clock is off: none, a day behind, 100 days ahead (capped), ten years ahead
CLOCKS = st.sampled_from([0.0, -86_400.0, 100 * 86_400.0, 3650 * 86_400.0])


class IdentityModel(RuleBasedStateMachine):
    """Random calls of a few people against the invariants in the module docstring."""

    def __init__(self, url: str = "sqlite:///:memory:") -> None:
        super().__init__()
        if url.startswith("redis"):
            with redis.Redis.from_url(url) as client:
                client.flushdb()
        self.store: StateStore = open_store(url)
        self.processor = Processor(
            Router(), IdentityResolver(self.store, cache_seconds=0, max_skew=SKEW), "US"
        )
        self.start = time.time() - 3600  # the calls overtake the real clock within the run
        self.step = 0
        self.emails = {p: f"p{p}@example.com" for p in range(PEOPLE)}
        self.phones = {p: f"+1415555{p:04d}" for p in range(PEOPLE)}
        self.latest: dict[tuple[int, str], tuple[float, str]] = {}  # (person, kind) -> when, what
        self.changes = 0

    def teardown(self) -> None:
        self.store.close()

    def _call(self, kind: str, clock: float, **fields: Any) -> tuple[Any, float] | None:
        """Process one call; (its result, its ordering time), or None if dead-lettered."""
        self.step += 1
        sent_at = self.start + self.step * 120
        stamp = datetime.fromtimestamp(sent_at + clock, UTC).isoformat()
        call = normalize(kind, {"messageId": f"m{self.step}", "timestamp": stamp, **fields})
        try:
            result = self.processor.process(call, Record("t", 0, self.step))
        except MappingError:
            assert sent_at + clock > time.time() + 365 * 86_400, "only the far future is refused"
            return None
        return result, min(sent_at + clock, time.time() + SKEW)

    @rule(
        person=st.integers(0, PEOPLE - 1),
        device=st.none() | st.integers(0, DEVICES - 1),
        new_email=st.booleans(),
        phone=st.booleans(),
        clock=CLOCKS,
    )
    def identify(
        self, person: int, device: int | None, new_email: bool, phone: bool, clock: float
    ) -> None:
        if new_email:
            self.changes += 1
            self.emails[person] = f"p{person}.{self.changes}@example.com"
        traits: dict[str, Any] = {"email": self.emails[person]}
        if phone:
            traits["phone"] = self.phones[person]
        fields: dict[str, Any] = {"userId": f"u{person}", "traits": traits}
        if device is not None:
            fields["anonymousId"] = f"d{device}"
        done = self._call("identify", clock, **fields)
        if done is None:
            return
        result, when = done
        [item] = [i for i in result.items if i.kind == "profiles"]
        assert item.profile["external_id"] == f"u{person}", "attributed to someone else"
        for kind, value in (("email", traits["email"]), ("phone", traits.get("phone"))):
            if value is None:
                continue
            if kind == "phone":
                value = self.phones[person]
            before = self.latest.get((person, kind))
            if before is None or when >= before[0]:
                self.latest[(person, kind)] = (when, value)

    @rule(person=st.integers(0, PEOPLE - 1), device=st.integers(0, DEVICES - 1), clock=CLOCKS)
    def track(self, person: int, device: int, clock: float) -> None:
        done = self._call(
            "track", clock, event="Viewed Product", userId=f"u{person}", anonymousId=f"d{device}"
        )
        if done is None:
            return
        [item] = done[0].items
        assert item.profile["external_id"] == f"u{person}", "an event on the wrong person"

    @rule(person=st.integers(0, PEOPLE - 1), device=st.integers(0, DEVICES - 1))
    def alias(self, person: int, device: int) -> None:
        self._call("alias", 0.0, previousId=f"d{device}", userId=f"u{person}")

    @invariant()
    def two_external_ids_are_never_one_person(self) -> None:
        seen: dict[str, str] = {}
        for p in range(PEOPLE):
            found = self.store.lookup(("external_id", f"u{p}"))
            if found is None:
                continue
            assert found.id not in seen, f"u{p} and {seen.get(found.id)} are one person"
            seen[found.id] = f"u{p}"
            assert found.identifiers["external_id"] == (f"u{p}",)

    @invariant()
    def the_latest_email_and_phone_win(self) -> None:
        for (p, kind), (_when, value) in self.latest.items():
            found = self.store.lookup(("external_id", f"u{p}"))
            assert found is not None
            assert found.identifiers.get(kind, ())[:1] == (value,), (p, kind, found.identifiers)


TestIdentityModelSqlite = IdentityModel.TestCase


@pytest.mark.slow
def test_identity_model_on_redis(clean_redis_url: str) -> None:
    run_state_machine_as_test(lambda: IdentityModel(clean_redis_url))
