"""The per-record middle of the pipeline: route → transform → identity → map, call → items.

The service feeds it decoded, deduplicated calls and hands the items to the batcher. A
`RecordError` raised here sends the record to the dead-letter topic with its reason. Calls of a
person nobody has named yet are held in the state store (the source is then done: the store
holds it durably) and come back as items when an identify or alias names that person.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream import metrics
from stream.batch import Item
from stream.calls import Call, Source
from stream.errors import MappingError
from stream.identifiers import Identifiers, identifiers_of
from stream.identity import Held, IdentityResolver
from stream.klaviyo import mapping
from stream.route import Router
from stream.state import Person
from stream.transform import Transformer


@dataclass(slots=True)
class Outcome:
    """What became of one call: items to send now; whether the call itself was held (durably,
    in the state store) or is carried by the last item. Neither: it was filtered or absorbed."""

    items: list[Item]
    held: bool = False
    carried: bool = False


@dataclass(frozen=True, slots=True)
class Processor:
    """Turns one call into the items to send."""

    router: Router
    identity: IdentityResolver
    phone_region: str = "US"
    transformer: Transformer = Transformer()  # user rules, then HIPAA redaction

    def process(self, call: Call, source: Source) -> Outcome:
        """Items for one call (plus any held events its identification released)."""
        skip = None if call.type == "alias" else self.router.reason_to_skip(call)
        if skip is not None:
            metrics.RECORDS_FILTERED.labels(call.type, skip).inc()
            return Outcome([])
        call = self.transformer(call)
        ids = identifiers_of(call, self.phone_region)
        person, released = self.identity.link(call, ids)
        items = self._released(released, person)
        if call.type == "alias":
            return Outcome(items)
        if call.type == "identify":
            if person is not None:
                merged = self.identity.with_traits(call, person)
                traits = mapping.profile_attributes(merged, Identifiers())
                profile = self.identity.profile(person) | traits
                items.append(Item("profiles", profile, None, [source]))
                return Outcome(items, carried=True)
            if not ids.anonymous_id:
                raise MappingError("identify names no email, phone, userId or anonymousId")
            return Outcome(items)
        event = mapping.event_attributes(call, self.router.metric_name(call))
        if mapping.wants_backfill(source.headers):
            event["backfill"] = True
        if person is None:
            if not ids.anonymous_id:
                raise MappingError(f"{call.type} call names no person (no userId or anonymousId)")
            person = self.identity.hold(Held(event, ids.anonymous_id, source))
            if person is None:
                metrics.RECORDS_HELD.inc()
                return Outcome(items, held=True)
        profile, key = self.identity.profile_with_key(person)
        items.append(Item("events", profile, event, [source], key))
        return Outcome(items, carried=True)

    def _released(self, released: list[Held], person: Person | None) -> list[Item]:
        if not released or person is None:
            return []
        metrics.RECORDS_RELEASED.labels("identified").inc(len(released))
        profile, key = self.identity.profile_with_key(person)
        return [Item("events", profile, h.event, [h.source], key) for h in released]

    @staticmethod
    def expired(held: Held, send: bool) -> Item | None:
        """A held event whose person was never named: sent with its anonymous_id, or dropped."""
        metrics.RECORDS_RELEASED.labels("expired_sent" if send else "expired_dropped").inc()
        if not send:
            return None
        return Item("events", {"anonymous_id": held.anonymous_id}, held.event, [held.source])
