"""Identity rules: which identifiers of a call join which person, in the style of Segment Unify.

Kinds have a priority (external_id > email > phone > anonymous_id) and a limit of values per
person (external_id: 1; email and phone: `IDENTITY_EMAIL_LIMIT` / `IDENTITY_PHONE_LIMIT`,
default 1; anonymous_id: any number). A call is attributed to the person of its strongest
identifier that anyone owns (its *anchor*; a new person when nobody owns any). Then, weakest
last, each other identifier of the call:

- owned by nobody: attached to the anchor. At the limit of its kind it replaces the anchor's
  oldest value of that kind (a changed address, as Klaviyo's upsert would change it), but only
  when the call is at least as new as that value; an older call leaves it unlinked;
- owned by the anchor: touched (it becomes the latest of its kind when the call is newer);
- owned by another person: the two persons are joined, unless the joined person would hold
  more values of a limited kind than allowed (two external_ids, two emails by default). A
  refused join leaves both persons as they are; a shared weak identifier (an anonymous_id of a
  browser two people used) moves to the anchor; a limited one stays with its owner, unlinked.

`plan_link` decides; the stores apply the plan atomically (SQLite: one transaction; Redis: a
check-and-apply script that refuses if any person it read changed meanwhile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from stream.state.base import Identifier, Kind, check_identifiers

PRIORITY: tuple[Kind, ...] = ("external_id", "email", "phone", "anonymous_id")
RANK = {kind: n for n, kind in enumerate(PRIORITY)}


@dataclass(frozen=True, slots=True)
class Limits:
    """How many values of each kind one person may hold (None: no limit)."""

    external_id: int = 1
    email: int = 1
    phone: int = 1

    def of(self, kind: Kind) -> int | None:
        return None if kind == "anonymous_id" else int(getattr(self, kind))


DEFAULT_LIMITS = Limits()

# a person as the rules see it: per kind, (value, last_seen) of each identifier it owns
Holdings = Mapping[Kind, Sequence[tuple[str, float]]]


@dataclass(slots=True)
class Plan:
    """What one link does. `anchor` None: a new person. Identifiers in `attach` end owned by
    the anchor (`move` names those taken from a person whose join was refused); `detach` are
    the anchor's values a changed address replaced; `refused` stay with their owner."""

    anchor: str | None
    fold: list[str] = field(default_factory=list)
    attach: list[Identifier] = field(default_factory=list)
    move: list[Identifier] = field(default_factory=list)
    detach: list[Identifier] = field(default_factory=list)
    refused: list[Identifier] = field(default_factory=list)
    refused_persons: list[str] = field(default_factory=list)


def strongest_first(identifiers: Sequence[Identifier]) -> list[Identifier]:
    """The call's identifiers by priority (stable within a kind)."""
    return sorted(identifiers, key=lambda ident: RANK[ident[0]])


def ordered_identifiers(
    identifiers: Sequence[Identifier], first: Identifier | None = None
) -> list[Identifier]:
    """Checked identifiers, strongest first (`first`, when given, leads)."""
    ids = strongest_first(check_identifiers(identifiers))
    if first is not None and first in ids:
        ids.remove(first)
        ids.insert(0, first)
    return ids


def plan_link(
    identifiers: Sequence[Identifier],
    owners: Mapping[Identifier, str],
    persons: Mapping[str, Holdings],
    timestamp: float,
    limits: Limits = DEFAULT_LIMITS,
) -> Plan:
    """Decide one link. `identifiers` come strongest first (`strongest_first`; an alias puts
    the previous id first, so a renamed user keeps their person); `owners` maps each owned
    identifier to its person; `persons` holds every such person's identifiers with their
    last-seen times. The anchor is the owner of the first identifier: a call whose strongest
    identifier nobody owns is a new person, whatever weaker identifiers it shares."""
    ordered = list(identifiers)
    anchor = owners.get(ordered[0]) if ordered else None
    plan = Plan(anchor)
    # the anchor's holdings as the plan changes them: kind -> {value: last_seen}
    held: dict[Kind, dict[str, float]] = {}
    if anchor is not None:
        for kind, values in persons[anchor].items():
            held[kind] = dict(values)
    joined: set[str] = {anchor} if anchor is not None else set()
    refused: set[str] = set()
    for ident in ordered:
        kind, value = ident
        owner = owners.get(ident)
        if owner is not None and owner in joined:
            _touch(held, ident, timestamp)
            plan.attach.append(ident)
            continue
        if owner is None:
            if _room(held, kind, value, timestamp, limits, plan):
                plan.attach.append(ident)
            else:
                plan.refused.append(ident)
            continue
        if owner not in refused and _joinable(held, persons[owner], limits):
            joined.add(owner)
            plan.fold.append(owner)
            for other_kind, values in persons[owner].items():
                for other_value, seen in values:
                    kinds = held.setdefault(other_kind, {})
                    kinds[other_value] = max(seen, kinds.get(other_value, seen))
            _touch(held, ident, timestamp)
            plan.attach.append(ident)
            continue
        if owner not in refused:
            refused.add(owner)
            plan.refused_persons.append(owner)
        if limits.of(kind) is None:  # a shared weak identifier follows the strongest one
            plan.move.append(ident)
            plan.attach.append(ident)
            _touch(held, ident, timestamp)
        else:
            plan.refused.append(ident)
    if plan.anchor is None and plan.fold:  # nobody owned the strongest: the first owner hosts
        plan.anchor = plan.fold.pop(0)
    return plan


def _touch(held: dict[Kind, dict[str, float]], ident: Identifier, timestamp: float) -> None:
    kind, value = ident
    values = held.setdefault(kind, {})
    values[value] = max(timestamp, values.get(value, timestamp))


def _room(
    held: dict[Kind, dict[str, float]],
    kind: Kind,
    value: str,
    timestamp: float,
    limits: Limits,
    plan: Plan,
) -> bool:
    """Make room for a new value of `kind` on the anchor (replacing its oldest value at the
    limit when this call is at least as new); False when the call is older than them all."""
    values = held.setdefault(kind, {})
    limit = limits.of(kind)
    if limit is not None and len(values) >= limit:
        oldest = min(values, key=lambda v: values[v])
        if timestamp < values[oldest]:
            return False
        del values[oldest]
        plan.detach.append((kind, oldest))
    values[value] = timestamp
    return True


def _joinable(held: dict[Kind, dict[str, float]], other: Holdings, limits: Limits) -> bool:
    """Whether one person may hold both sets of values without passing a limit."""
    for kind, values in other.items():
        limit = limits.of(kind)
        if limit is None:
            continue
        union = set(held.get(kind, {})) | {value for value, _ in values}
        if len(union) > limit:
            return False
    return True


@dataclass(slots=True)
class ErasurePlan:
    """Whom a delete call erases: `persons` (the person the call resolves to, with those the
    rules would join to it), the call's identifiers nobody owns (they are that person's too:
    `unowned`), and the call's identifiers that belong to someone else (`others`: left alone)."""

    persons: list[str] = field(default_factory=list)
    unowned: list[Identifier] = field(default_factory=list)
    others: list[Identifier] = field(default_factory=list)


def plan_erasure(
    identifiers: Sequence[Identifier],
    owners: Mapping[Identifier, str],
    persons: Mapping[str, Holdings],
    limits: Limits = DEFAULT_LIMITS,
) -> ErasurePlan:
    """Resolve a delete call as the identity rules resolve any call (`plan_link`, as if it
    were the newest call), then erase only that person: a shared weak identifier or a limited
    one held by a person the rules keep apart stays with its owner. A call naming only
    anonymous ids never erases a named person (a browser may be shared): it erases an
    anonymous one, or nothing."""
    ordered = strongest_first(check_identifiers(identifiers))
    plan = plan_link(ordered, owners, persons, float("inf"), limits)
    out = ErasurePlan()
    if plan.anchor is not None:
        out.persons = [plan.anchor, *plan.fold]
    kept = {ident for ident in ordered if owners.get(ident) in plan.refused_persons}
    out.others = [ident for ident in ordered if ident in kept]
    out.unowned = [ident for ident in ordered if ident not in owners]
    if all(kind == "anonymous_id" for kind, _ in ordered) and any(
        kind != "anonymous_id" and values
        for person in out.persons
        for kind, values in persons[person].items()
    ):
        out.others = [ident for ident in ordered if ident in owners]
        out.persons = []
    return out
