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

from stream import metrics
from stream.batch import Item, encode
from stream.calls import Call, Record
from stream.errors import InvalidIdentifier, MappingError
from stream.identifiers import Identifiers, identifiers_of
from stream.identity import Held, IdentityResolver
from stream.klaviyo import mapping
from stream.ledger import Outcome
from stream.route import Router
from stream.state import Person
from stream.timing import check_time
from stream.transform import Transformer

log = logging.getLogger(__name__)

RELEASED = "released held call"  # dead-letter label of a released held call's item


@dataclass(slots=True)
class Result:
    """What became of one call: items to send for its record, or (none) its own outcome; and
    held calls its identification released, each carried by its own record."""

    items: list[Item] = field(default_factory=list)
    outcome: Outcome | None = None
    released: list[Item] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Processor:
    """Turns one call into the items to send."""

    router: Router
    identity: IdentityResolver
    phone_region: str = "US"
    transformer: Transformer = Transformer()  # user rules, then HIPAA redaction

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
        item: Item | None = None
        if call.type != "track" and call.type != "page":
            check_time(call)  # events are checked with their attributes below
        if call.type == "identify":
            # checked before the graph changes: traits Klaviyo or the store cannot take
            encode(call.traits)
            Item("profiles", mapping.profile_attributes(call, ids), None, [])
        elif call.type != "alias":
            event = mapping.event_attributes(call, self.router.metric_name(call))
            if mapping.wants_backfill(record.headers):
                event["backfill"] = True
            item = Item("events", {}, event, [record])  # checks Klaviyo's limits, encodes once
        person, released = self.identity.link(call, ids)
        result = Result(released=self._released(released, person))
        if call.type == "alias":
            result.outcome = Outcome.ABSORBED
        elif call.type == "identify":
            if person is not None:
                merged = self.identity.with_traits(call, person)
                traits = mapping.profile_attributes(merged, Identifiers())
                profile = self.identity.profile(person) | traits
                result.items.append(Item("profiles", profile, None, [record], person=person.id))
            elif not ids.anonymous_id:
                raise MappingError("identify names no email, phone, userId or anonymousId")
            else:
                result.outcome = Outcome.ABSORBED  # an anonymous identify: its traits wait
        else:
            assert item is not None and item.event is not None
            if person is None:
                if not ids.anonymous_id:
                    raise MappingError(
                        f"{call.type} call names no person (no userId or anonymousId)"
                    )
                person = self.identity.hold(Held(item.event, ids.anonymous_id, record))
                if person is None:
                    metrics.RECORDS_HELD.inc()
                    result.outcome = Outcome.HELD
                    return result
            profile, key = self.identity.profile_with_key(person)
            result.items.append(item.addressed(profile, key))
        return result

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
