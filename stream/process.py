"""The per-record middle of the pipeline: route, then transform → identity → map, call → items.

The service routes each decoded call first (`skip`: a filtered record costs no dedup or
identity work), deduplicates what goes on, then asks `process` for the items to send. What
`process` returns is the whole answer for the record: its items, or the outcome of a record
that makes none (held, absorbed), plus the held calls its identification released (each with
its own store-backed record). A `RecordError` raised here dead-letters the record.

Everything a call carries is checked before it can change the identity graph or be held: an
event that Klaviyo would refuse (a 100 KB string, a 5 MB body, JSON nested too deep) is a dead
letter at once, never a held call that fails later on someone else's identify.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from stream import metrics
from stream.batch import Item, encode
from stream.calls import Call, Record
from stream.errors import InvalidIdentifier, MappingError
from stream.hipaa import redacted_copy
from stream.identifiers import Identifiers, identifiers_of
from stream.identity import Held, IdentityResolver
from stream.klaviyo import mapping
from stream.klaviyo.commerce import event_specs
from stream.ledger import Outcome
from stream.route import Router
from stream.state import Person
from stream.timing import check_time
from stream.transform import Transformer

log = logging.getLogger(__name__)

RELEASED = "released held call"  # dead-letter label of a released held call's item


EVENT_TYPES = ("track", "page", "screen")


@dataclass(slots=True)
class Failed:
    """An item that could not even be built (a bad order line): a dead letter of its own."""

    records: list[Record]
    label: str | None
    error: MappingError


@dataclass(slots=True)
class Result:
    """What became of one call: items to send for its record, or (none) its own outcome;
    items of it that failed on their own (a bad order line); and held calls its
    identification released, each carried by its own record."""

    items: list[Item] = field(default_factory=list)
    outcome: Outcome | None = None
    released: list[Item] = field(default_factory=list)
    failures: list[Failed] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Processor:
    """Turns one call into the items to send."""

    router: Router
    identity: IdentityResolver
    phone_region: str = "US"
    transformer: Transformer = Transformer()  # user rules, then HIPAA redaction
    ecommerce: bool = True  # Segment's ecommerce events as Klaviyo's standard metrics
    hold_redacted: bool = False  # HIPAA mode: a held call keeps the filtered call, not its record

    def skip(self, call: Call) -> str | None:
        """Why this call is not for Klaviyo (a metric label), or None. Counted here."""
        if call.type == "alias":
            return None  # feeds the identity graph
        reason = self.router.reason_to_skip(call)
        if reason is not None:
            metrics.RECORDS_FILTERED.labels(call.type, reason).inc()
        return reason

    def process(self, call: Call, record: Record) -> Result:
        """The items for one routed call (plus any held events its identification released)."""
        call = self.transformer(call)
        ids, dropped = identifiers_of(call, self.phone_region)
        if dropped:
            self._drop(ids, dropped, record)
        result = Result()
        events: list[Item] = []
        traits: dict[str, Any] | None = None
        if call.type in EVENT_TYPES:
            events = self._events(call, record, result)  # checked before the graph changes
        else:
            check_time(call)
        if call.type == "identify":
            traits = call.traits
            if call.options.unset:  # unset: a null at the call's time, so no older call revives it
                traits = {**traits, **dict.fromkeys(call.options.unset)}
            encode(traits)  # traits Klaviyo or the store cannot take: refused before the link
            Item("profiles", mapping.profile_attributes(call, ids), None, [])
        person, released = self.identity.link(call, ids, traits)
        result.released = self._released(released, person)
        if call.type == "alias":
            result.outcome = Outcome.ABSORBED
        elif call.type == "identify" or call.type == "group":
            self._profile(call, ids, person, record, result)
        elif person is None:
            if not ids.anonymous_id:
                raise MappingError(f"{call.type} call names no person (no userId or anonymousId)")
            kept = redacted_copy(record, call) if self.hold_redacted else record
            for item in events:
                assert item.event is not None
                named = self.identity.hold(Held(item.event, ids.anonymous_id, kept))
                if named is None:
                    metrics.RECORDS_HELD.inc()
                    result.outcome = Outcome.HELD
                else:  # named meanwhile (by another consumer): sent now
                    profile, key = self.identity.profile_with_key(named)
                    result.items.append(item.addressed(profile, key))
        else:
            profile, key = self.identity.profile_with_key(person)
            result.items.extend(item.addressed(profile, key) for item in events)
        return result

    def _events(self, call: Call, record: Record, result: Result) -> list[Item]:
        """The events of a track, page or screen call (an order also makes one Ordered Product
        per line), each encoded and checked against Klaviyo's limits. A bad line is a failure
        of that line alone; a bad call raises."""
        backfill = mapping.wants_backfill(record.headers)
        items: list[Item] = []
        for spec in event_specs(call, self.router.metric_name(call), self.ecommerce):
            label = None if spec.line is None else f"line {spec.line}"
            if spec.error is not None:
                result.failures.append(Failed([record], label, spec.error))
                continue
            assert spec.attributes is not None
            if backfill:
                spec.attributes["backfill"] = True
            try:
                items.append(Item("events", {}, spec.attributes, [record], "{}", label=label))
            except MappingError as exc:
                if spec.line is None:
                    raise  # the call's own event: the whole record
                result.failures.append(Failed([record], label, exc))
        return items

    def _profile(
        self, call: Call, ids: Identifiers, person: Person | None, record: Record, result: Result
    ) -> None:
        """The profile upsert of an identify (or an enabled group) call."""
        if person is None:
            if call.type == "identify" and not ids.anonymous_id:
                raise MappingError("identify names no email, phone, userId or anonymousId")
            result.outcome = Outcome.ABSORBED  # anonymous: its traits wait in the graph
            return
        if call.type == "group":
            attributes = mapping.group_profile_attributes(call)
            if attributes is None:
                result.outcome = Outcome.ABSORBED
                return
            profile = self.identity.profile(person) | attributes
            result.items.append(Item("profiles", profile, None, [record], person=person.id))
            return
        merged = self.identity.with_traits(call, person)
        profile = self.identity.profile(person) | mapping.profile_attributes(merged, Identifiers())
        meta = mapping.profile_meta(call.options)
        result.items.append(
            Item("profiles", profile, None, [record], person=person.id, meta=meta)
        )

    @staticmethod
    def _drop(ids: Identifiers, dropped: tuple[InvalidIdentifier, ...], record: Record) -> None:
        """A bad identifier costs itself: counted, logged without its value. A call left with
        no valid name for its person (the bad one was its only one) is a dead letter naming
        that field, never an anonymous call."""
        if not ids.named:
            raise dropped[0]
        for bad in dropped:
            metrics.FIELDS_DROPPED.labels(bad.field, bad.kind).inc()
            log.warning(
                "invalid identifier dropped, the call goes on without it",
                extra={"field": bad.field, "reason": bad.kind, "topic": record.topic,
                       "partition": record.partition, "offset": record.offset},
            )

    def _released(self, released: list[Held], person: Person | None) -> list[Item]:
        if not released or person is None:
            return []
        metrics.RECORDS_RELEASED.labels("identified").inc(len(released))
        profile, key = self.identity.profile_with_key(person)
        return [self.released_item(h, profile, key) for h in released]

    @staticmethod
    def released_item(held: Held, profile: dict[str, str], key: str = "") -> Item:
        """The item of a held call sent on `profile` (its person's, or its anonymous_id's)."""
        return Item("events", profile, held.event, [held.record], key, label=RELEASED)
