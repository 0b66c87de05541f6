"""Realistic identity traffic with known ground truth, for tests and the inflation benchmark.

Each person browses anonymously on the web, then signs up (identify with userId + email, or a
newsletter form with only an email first), later adds a phone number (national or international
format), uses the mobile app (track with userId only), sometimes links a second device with
`alias`. Emails come with case and whitespace variants. Some persons never identify. 10% of
calls are sent twice (same messageId) and some identifies arrive out of order. The ground truth
says which persons exist, which events belong to whom, and which traits must win.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

AREA_CODES = ("415", "212", "646", "312", "617", "206")


@dataclass
class TruePerson:
    """One real person as the ground truth knows them (identifiers normalized)."""

    user_id: str
    email: str
    phone: str | None = None
    traits: dict[str, tuple[float, Any]] = field(default_factory=dict)  # key → (ts, value)

    def final_traits(self) -> dict[str, Any]:
        """Trait values with the newest timestamp per key."""
        return {k: v for k, (_, v) in self.traits.items()}


@dataclass
class GroundTruth:
    """What a correct pipeline must produce in Klaviyo."""

    persons: dict[str, TruePerson] = field(default_factory=dict)  # by user_id
    event_owner: dict[str, str] = field(default_factory=dict)  # messageId → user_id
    released: set[str] = field(default_factory=set)  # events sent while still anonymous
    never_identified: set[str] = field(default_factory=set)  # events of persons never named
    anonymous_persons: int = 0
    duplicates: int = 0


@dataclass
class Scenario:
    """The calls in publishing order, and the truth they imply."""

    calls: list[dict[str, Any]]
    truth: GroundTruth


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.start = datetime(2026, 5, 1, tzinfo=UTC)
        self.timed: list[tuple[float, dict[str, Any]]] = []
        self.truth = GroundTruth()

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128)))

    def call(self, at: float, kind: str, **fields: Any) -> dict[str, Any]:
        when = (self.start + timedelta(seconds=at)).isoformat()
        call = {"type": kind, "messageId": self.uid(), "timestamp": when, **fields}
        self.timed.append((at, call))
        return call

    def event(self, at: float, owner: str | None, **fields: Any) -> dict[str, Any]:
        name = self.rng.choice(["Viewed Product", "Added to Cart", "Ordered Product"])
        props: dict[str, Any] = {"sku": f"SKU-{self.rng.randint(1, 50)}", "step": int(at)}
        if name == "Ordered Product":
            props.update(revenue=round(self.rng.uniform(5, 200), 2), currency="USD",
                         products=[{"sku": props["sku"], "quantity": self.rng.randint(1, 3)}])
        call = self.call(at, "track", event=name, properties=props, **fields)
        if owner is not None:
            self.truth.event_owner[call["messageId"]] = owner
        return call

    def email_variant(self, email: str) -> str:
        choice = self.rng.random()
        if choice < 0.3:
            return email.upper()
        if choice < 0.6:
            return f"  {email.capitalize()} "
        return email

    def phone(self, index: int) -> tuple[str, str]:
        area = AREA_CODES[index % len(AREA_CODES)]
        line = f"01{index % 100:02d}"
        e164 = f"+1{area}555{line}"
        if self.rng.random() < 0.5:
            return f"({area}) 555-{line}", e164
        return f"+1 {area}-555-{line}", e164


def build_scenario(persons: int = 300, seed: int = 3, anonymous_share: float = 0.15,
                   duplicate_share: float = 0.10) -> Scenario:
    """Generate the traffic of `persons` people (plus anonymous visitors) and its truth."""
    b = _Builder(seed)
    rng = b.rng
    for i in range(persons):
        t = float(i * 3)
        web = b.uid()
        if rng.random() < anonymous_share:
            b.truth.anonymous_persons += 1
            for _ in range(rng.randint(1, 3)):
                t += 1
                b.truth.never_identified.add(b.event(t, None, anonymousId=web)["messageId"])
            continue
        user_id, email = f"u-{i}", f"person{i}@example.com"
        person = b.truth.persons[user_id] = TruePerson(user_id, email)
        # 1. anonymous browsing on the web: held until signup
        for _ in range(rng.randint(1, 3)):
            t += 1
            b.truth.released.add(b.event(t, user_id, anonymousId=web)["messageId"])
        # 2. signup; some first leave only an email (newsletter), then use the app by userId
        plan_v1 = rng.choice(["free", "pro"])
        if rng.random() < 0.4:
            t += 1
            b.call(t, "identify", anonymousId=web, traits={"email": b.email_variant(email)})
            for _ in range(rng.randint(1, 2)):
                t += 1
                b.event(t, user_id, userId=user_id)
        t += 1
        traits = {"email": b.email_variant(email), "firstName": f"First{i}", "plan": plan_v1}
        b.call(t, "identify", userId=user_id, anonymousId=web, traits=traits)
        person.traits.update(firstName=(t, f"First{i}"), plan=(t, plan_v1))
        # 3. later a phone number and a plan change, sometimes published before the older call
        if rng.random() < 0.5:
            raw, e164 = b.phone(i)
            person.phone = e164
            t += 1
            b.call(t, "identify", userId=user_id, traits={"phone": raw, "plan": "enterprise"})
            person.traits["plan"] = (t, "enterprise")
            if rng.random() < 0.3:  # out of order: an older identify published after it
                older = b.call(t - 0.5, "identify", userId=user_id, traits={"plan": "trial"})
                b.timed[-1] = (t + 0.5, older)
        # 4. mobile app: userId only
        for _ in range(rng.randint(1, 3)):
            t += 1
            b.event(t, user_id, userId=user_id)
        # 5. a second device linked by alias
        if rng.random() < 0.3:
            device = b.uid()
            for _ in range(rng.randint(1, 2)):
                t += 1
                b.truth.released.add(b.event(t, user_id, anonymousId=device)["messageId"])
            t += 1
            b.call(t, "alias", previousId=device, userId=user_id)
    b.timed.sort(key=lambda pair: pair[0])
    # a duplicate is published again somewhat later (a producer retry, a replayed batch)
    placed: list[tuple[float, dict[str, Any]]] = []
    for at, call in b.timed:
        placed.append((at, call))
        if rng.random() < duplicate_share:
            placed.append((at + rng.uniform(0, 60), dict(call)))
            b.truth.duplicates += 1
    placed.sort(key=lambda pair: pair[0])
    return Scenario([call for _, call in placed], b.truth)
