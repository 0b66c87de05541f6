"""The per-record middle of the pipeline: route, then transform → identity → map, call → items.

The handler routes each call first, once (`route`, or `route_peeked` on the few fields a peek
reads: a filtered record costs no dedup or identity work), deduplicates what goes on, then
asks `process` for the items to send. What
`process` returns is the whole answer for the record: its items, or the outcome of a record
that makes none (held, absorbed), plus the held calls its identification released (each with
its own store-backed record). A `RecordError` raised here dead-letters the record.

Everything a call carries is checked before it can change the identity graph or be held: an
event that Klaviyo would refuse (a 100 KB string, a 5 MB body, JSON nested too deep) is a dead
letter at once, never a held call that fails later on someone else's identify.

Consent, list and deletion actions (`stream.rules.consent`, `stream.identity.erasure`) are more
items of the record, in `Result.actions`: what the call asks of its person (per-call options and
consent rules; a call routing filters still makes them), each change marked in the person's traits
so that only the latest per channel is sent. A `delete` call (never filtered, never HIPAA-reduced)
forgets its person and makes one deletion per identifier; a record older than the deletion of a
person it names is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from stream.catalog import stock
from stream.completion.ledger import Outcome
from stream.core.calls import Call, Record, routing_call
from stream.core.errors import InvalidIdentifier, MappingError
from stream.core.identifiers import Identifiers, identifiers_of
from stream.core.timing import check_time, event_seconds, order_time
from stream.delivery.actions import Action
from stream.delivery.batch import Item, encode
from stream.identity.erasure import Erasure
from stream.identity.resolver import Held, IdentityResolver, graph_identifiers
from stream.intake.decode import Peeked
from stream.klaviyo import mapping
from stream.klaviyo.commerce import event_specs
from stream.klaviyo.consent import CHANNEL_IDENTIFIER
from stream.klaviyo.mapping import ANONYMOUS_EXTERNAL_ID, ERASURE_HEADER
from stream.rules.consent import DEFAULT_SOURCE, Asks, ConsentRules, consent_traits, still_current
from stream.rules.hipaa import redacted_copy
from stream.rules.route import ON, Route, Router
from stream.rules.transform import Transformer
from stream.state import Person
from stream.state.base import Forgotten, Guard
from stream.telemetry import metrics

log = logging.getLogger(__name__)

RELEASED = "released held call"  # dead-letter label of a released held call's item
DELETABLE = {"email": "email", "phone": "phone_number", "external_id": "external_id"}
DELETION_ORDER = ("email", "phone_number", "external_id")  # what a deletion goes by, first


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
    actions: list[Action] = field(default_factory=list)  # consent, lists, deletion: the gate's
    after_erasures: tuple[str, ...] = ()  # deletions in flight it names: items and actions wait


@dataclass(frozen=True, slots=True)
class Processor:
    """Turns one call into the items to send."""

    router: Router
    identity: IdentityResolver
    phone_region: str = "US"
    transformer: Transformer = Transformer()  # user rules, then HIPAA redaction
    ecommerce: bool = True  # Segment's ecommerce events as Klaviyo's standard metrics
    consent: ConsentRules = ConsentRules()  # the consent rules file's (per-call options apart)
    erasure: Erasure | None = None  # deletions and tombstones (None: delete calls refused)
    client_mode: bool = False  # a public key: subscriptions (to a list) are all we can send
    custom_source: str = DEFAULT_SOURCE  # `custom_source` of the consent records we make
    hold_redacted: bool = False  # HIPAA mode: a held call keeps the filtered call, not its record
    max_skew: float = 600.0  # how far ahead of its reading a call's time may order it
    anonymous_profiles: bool = False  # EXPIRED_ANONYMOUS=send: anonymous persons' profiles exist
    back_in_stock_event: str = ""  # a track call of this name asks a back-in-stock notice
    account: str | None = None  # the account it processes for (None: the only one, no file)

    def route(self, call: Call) -> Route:
        """Where a decoded call goes (`Route`): routing, and what it asks of consent and lists
        (a call routing filters still makes those)."""
        if call.type == "alias" or call.type == "delete":
            return ON  # feeds the identity graph; an erasure is never filtered away
        reason = self.router.reason_to_skip(call)
        if reason is None:
            return ON
        if reason != "integrations" and self.consent.asks(call):
            return Route(reason, asks_only=True)
        return Route(reason)

    def route_peeked(self, peeked: Peeked) -> Route | None:
        """Where a call goes judged on its peek alone (type, name, integrations); None when
        only a full decode can tell (malformed integrations; consent or lists it may ask)."""
        call = routing_call(*peeked)
        if call is None:
            return None
        reason = self.router.reason_to_skip(call)
        if reason is None:
            return ON
        if reason != "integrations" and self.consent.may_ask(call):
            return None  # not sent itself, but the consent and list changes it asks may be
        return Route(reason)

    def process(self, call: Call, record: Record, route: Route | None = None) -> Result:
        """The items for one call that goes on (plus any held events its identification
        released); `route` as the handler decided it (None: decided here)."""
        if call.type == "delete":
            return self._erase(call, record)
        asks = self.consent.asks(call)  # on the call as it came, like routing
        call = self.transformer(call)
        ids, dropped = identifiers_of(call, self.phone_region)
        if dropped:
            self._drop(ids, dropped, record)
        check_time(call)  # a malformed time is that reason, before any deletion is looked at
        waits: tuple[str, ...] = ()
        guard = None
        erasure = self.erasure
        if erasure is not None:
            record.stamp = erasure.mark  # judged against every deletion up to here
            record.called_at = erasure.called_at(call)
            verdict = erasure.check(call, ids, record)
            if verdict.older:  # it would bring a deleted person back
                if asks.unsubscribe:
                    metrics.OPT_OUTS.labels("person_deleted").inc()
                return Result(outcome=Outcome.FILTERED)
            waits = verdict.waits  # newer, but that deletion is still under way
            if verdict.without_anonymous_id:  # erased with someone else: not this person's
                ids = ids._replace(anonymous_id=None)
            guard = erasure.guard(call, record)
        if route is None:
            route = self.route(call)
        if route.asks_only:
            result = self._consent_only(call, route, ids, record, asks, guard)
            result.after_erasures = waits
            return result
        result = Result(after_erasures=waits)
        events: list[Item] = []
        traits: dict[str, Any] | None = None
        if call.type in EVENT_TYPES:
            events = self._events(call, record, result)  # checked before the graph changes
        if call.type == "identify":
            traits = call.traits
            if call.options.unset:  # unset: a null at the call's time, so no older call revives it
                traits = {**traits, **dict.fromkeys(call.options.unset)}
            encode(traits)  # traits Klaviyo or the store cannot take: refused before the link
            Item("profiles", mapping.profile_attributes(call, ids), None, [])
        if asks:  # each change marked with its time: the latest per channel wins
            traits = {**(traits or {}), **consent_traits(asks, call.message_id, self._when(call))}
        linked = self.identity.link(call, ids, traits, guard)
        if linked.tombstoned:  # a deletion this replica had not read yet: the store knew it
            metrics.RECORDS_TOMBSTONED.inc()
            if asks.unsubscribe:
                metrics.OPT_OUTS.labels("person_deleted").inc()
            return Result(outcome=Outcome.FILTERED)
        person = linked.person
        result.released = self._released(linked.released, person)
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
        if asks:
            self._act(call, person, record, result, asks)
        if call.type == "track":
            self._back_in_stock(call, person, record, result)
        return result

    def _when(self, call: Call) -> float:
        """The call's time for ordering (what consent marks and deletions compare)."""
        if self.erasure is not None:
            return self.erasure.called_at(call)
        return order_time(call, time.time(), self.max_skew)

    def _back_in_stock(
        self, call: Call, person: Person | None, record: Record, result: Result
    ) -> None:
        """A back-in-stock request (`stream.catalog.stock`): one more action of the record."""
        try:
            asked = stock.requested(call, self.back_in_stock_event)
            if asked is None:
                return
            if person is None:
                raise MappingError(f"{stock.LABEL}: names no one Klaviyo can know (anonymous)")
            profile = self.identity.profile(person)
            result.actions.append(stock.subscription(asked, profile, person.id, record))
        except MappingError as exc:
            result.failures.append(Failed([record], stock.LABEL, exc))

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

    # consent, lists and deletion -------------------------------------------------------------

    def _consent_only(
        self,
        call: Call,
        route: Route,
        ids: Identifiers,
        record: Record,
        asks: Asks,
        guard: Guard | None,
    ) -> Result:
        """A call routing filters that asks consent or list changes: those alone are sent."""
        metrics.RECORDS_FILTERED.labels(call.type, route.reason or "not_defined").inc()
        marks = consent_traits(asks, call.message_id, self._when(call))
        linked = self.identity.link(call, ids, marks, guard)
        if linked.tombstoned:
            metrics.RECORDS_TOMBSTONED.inc()
            if asks.unsubscribe:
                metrics.OPT_OUTS.labels("person_deleted").inc()
            return Result(outcome=Outcome.FILTERED)
        person = linked.person
        result = Result(released=self._released(linked.released, person))
        self._act(call, person, record, result, asks)
        if not result.actions:
            result.outcome = Outcome.FILTERED
        return result

    def _act(
        self, call: Call, person: Person | None, record: Record, result: Result, asks: Asks
    ) -> None:
        """The consent and list actions of a call whose person is `person`: the changes still
        current (a newer call overtook none of them), each needing the identifier its channel
        takes; what cannot be sent is a dead letter of its own, naming the change."""
        if person is None:
            result.failures.append(Failed([record], "consent and lists", MappingError(
                "its consent and list changes name no one Klaviyo can know (no email, phone "
                "or userId linked to the call, or to the anonymousId it names)"
            )))  # fmt: skip
            if asks.unsubscribe:
                metrics.OPT_OUTS.labels("dead_lettered").inc()
            return
        current, overtaken = still_current(asks, person.traits, self._when(call))
        for channel in overtaken:
            metrics.CONSENT_OVERTAKEN.labels(channel).inc()
        for _channel in set(asks.unsubscribe) - set(current.unsubscribe):
            metrics.OPT_OUTS.labels("superseded").inc()
        profile = self.identity.profile(person)
        backfill = mapping.wants_backfill(record.headers)
        consented_at = mapping.event_time(call.timestamp) if backfill else None

        def add(kind: Any, label: str, **details: Any) -> None:
            result.actions.append(
                Action(kind, profile, None, [record], person=person.id, label=label, **details)
            )
            metrics.CONSENT_ACTIONS.labels(kind).inc()

        def refuse(label: str, why: str) -> None:
            result.failures.append(Failed([record], label, MappingError(f"{label}: {why}")))
            if label.startswith("unsubscribe"):
                metrics.OPT_OUTS.labels("dead_lettered").inc()

        def reachable(verb: str, channels: tuple[str, ...]) -> tuple[str, ...]:
            ready = tuple(c for c in channels if profile.get(CHANNEL_IDENTIFIER[c]))
            for channel in channels:
                if channel not in ready:
                    what = "email" if channel == "email" else "phone number (E.164)"
                    refuse(f"{verb} {channel}", f"the person has no {what} we know")
            return ready

        server_only = "KLAVIYO_MODE=client can only subscribe (server mode needed)"
        subscribe = reachable("subscribe", current.subscribe)
        if subscribe and self.client_mode and current.list_id is None:
            refuse(f"subscribe {','.join(subscribe)}", "client mode subscribes to a list only")
        elif subscribe:
            add("subscribe", f"subscribe {','.join(subscribe)}", channels=subscribe,
                list_id=current.list_id, consented_at=consented_at, source=self.custom_source)
        unsubscribe = reachable("unsubscribe", current.unsubscribe)
        if unsubscribe and self.client_mode:
            refuse(f"unsubscribe {','.join(unsubscribe)}", server_only)
        elif unsubscribe:
            add("unsubscribe", f"unsubscribe {','.join(unsubscribe)}", channels=unsubscribe)
        if current.suppress is not None:
            kind = "suppress" if current.suppress else "unsuppress"
            if self.client_mode:
                refuse(kind, server_only)
            elif not profile.get("email"):
                refuse(kind, "the person has no email we know")
            else:
                add(kind, kind)
        after = len(result.items)  # the profile must exist: after the record's own items
        for verb, kind, ids in (("add", "list_add", current.add),
                                ("remove", "list_remove", current.remove)):  # fmt: skip
            for list_id in ids:
                if self.client_mode:
                    refuse(f"list {verb} {list_id}", server_only)
                else:
                    add(kind, f"list {verb} {list_id}", list_id=list_id, after=after)
        if result.actions and result.outcome is Outcome.ABSORBED:
            result.outcome = None  # it made items after all

    def _erase(self, call: Call, record: Record) -> Result:
        """A delete call: the person it resolves to is forgotten here (`stream.identity.
        erasure`) and deleted at Klaviyo by one request (by profile id where known, else by
        their strongest deletable identifier), confirmed later by looking every one of their
        identifiers up. The user's transformations apply; HIPAA mode does not: an erasure needs
        every identifier it names."""
        erasure = self.erasure
        if erasure is None:
            raise MappingError("delete calls need the state store (no erasure configured)")
        reopened = _erasure_named(record)
        if reopened is not None:  # a replayed dead letter that kept no identifier
            forgotten = erasure.reopen(reopened)
            if forgotten is None:
                raise MappingError(
                    f"erasure {reopened} is no longer kept (ERASURE_KEEP_SECONDS): replay the"
                    " delete call with its identifiers"
                )
            return self._deletion(call, record, forgotten, reopened)
        call = dataclasses.replace(self.transformer, hipaa=None)(call)
        ids, dropped = identifiers_of(call, self.phone_region)
        if dropped:
            self._drop(ids, dropped, record)
        check_time(call)
        named = graph_identifiers(ids)
        if not named:
            raise MappingError("a delete call names no email, phone, userId or anonymousId")
        record.stamp = erasure.mark
        forgotten = erasure.forget(call, named, record)
        if forgotten.again and not forgotten.identifiers:
            return Result(outcome=Outcome.ABSORBED)  # done before: whoever holds them came after
        return self._deletion(call, record, forgotten, call.message_id)

    def _deletion(
        self, call: Call, record: Record, forgotten: Forgotten, erasure_id: str
    ) -> Result:
        """The one deletion of an erasure (none when Klaviyo can hold nothing of it)."""
        erasure = self.erasure
        assert erasure is not None
        deletable = [(DELETABLE[k], v) for k, v in forgotten.identifiers if k in DELETABLE]
        if self.anonymous_profiles:  # the profiles its expired anonymous calls were sent on
            deletable += [
                ("external_id", ANONYMOUS_EXTERNAL_ID + v)
                for k, v in forgotten.identifiers
                if k == "anonymous_id"
            ]
        lookups = sorted(deletable, key=lambda pair: DELETION_ORDER.index(pair[0]))
        if not lookups:  # anonymous ids only: nothing Klaviyo can hold, forgotten here
            erasure.settle(erasure_id)
            return Result(outcome=Outcome.ABSORBED)
        result = Result()
        if self.client_mode:
            why = "KLAVIYO_MODE=client cannot ask Klaviyo for a deletion (the private key can)"
            result.failures.append(Failed([record], "deletion", MappingError(f"deletion: {why}")))
            erasure.fail(erasure_id)
            return result
        profile = {attribute: value for attribute, value in reversed(lookups)}
        result.actions.append(Action(
            "deletion", profile, None, [record], person="erasure:" + erasure_id,
            label="deletion", erasure=erasure_id, seq=forgotten.seq,
            lookups=tuple(lookups), person_ids=forgotten.person_ids,
        ))  # fmt: skip
        metrics.CONSENT_ACTIONS.labels("deletion").inc()
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

    def released_item(self, held: Held, profile: dict[str, str], key: str = "") -> Item:
        """The item of a held call sent on `profile` (its person's, or its anonymous_id's),
        its record stamped as work begun now (`stream.identity.fence`)."""
        record = held.record
        record.account = self.account  # from this account's store: finished in its window
        if self.erasure is not None:
            record.stamp = self.erasure.mark
        record.called_at = event_seconds(held.event)
        return Item("events", profile, held.event, [record], key, label=RELEASED)


def _erasure_named(record: Record) -> str | None:
    """The erasure a replayed delete call names (`ERASURE_HEADER`), if any."""
    for key, value in record.headers or ():
        if key == ERASURE_HEADER and value:
            return value.decode() if isinstance(value, bytes) else value
    return None
