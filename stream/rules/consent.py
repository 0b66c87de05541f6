"""What a call asks of its person's consent and list memberships, and whether it is still news.

Two sources, usable together: the call's own `integrations.Klaviyo` options (`stream.core.options`)
and the rules of a `CONSENT_FILE` (YAML or JSON, checked at start like the other config files):

    rules:
      - when: {type: identify, traits: {newsletter: true}}
        subscribe: {email: true, list_id: Xy12Ab}
      - when: {type: track, event: SMS Opt Out}
        unsubscribe: [sms]
      - when: {type: group}
        group_lists: {acme: Xy12Ab}          # groupId → the list its members join

`when` selects calls like an event definition (type; event exactly, `pattern` or `regex`) and
by trait values (`traits`: the identify call's traits, `context.traits` of the others). Every
matching rule applies, in file order, then the call's options: the later one wins per channel,
per list and for suppression. Rules are read on the call as it arrives (before
transformations), as routing is.

Latest consent wins per channel, by call time: each change is marked in the person's traits in
the identity graph (private keys, merged per key by the call's time like any trait), with that
time. After the call is linked, a change whose mark there is newer than the call was
superseded by a newer call (a reordered or replayed older one arriving late) and is not sent;
whether a mark exists says nothing (a call answered by a cache, or one naming its person by a
weak identifier, is judged the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.core.calls import Call
from stream.core.errors import ConsentConfigError, DecodeError
from stream.core.options import CHANNELS, NO_OPTIONS, KlaviyoOptions, parse_options
from stream.identity.resolver import PRIVATE_TRAITS
from stream.rules.configfile import load_document
from stream.rules.route import Selector, selector_from

DEFAULT_SOURCE = "klaviyo-stream"  # `custom_source` of the consent records we make
MARK = PRIVATE_TRAITS + "consent."  # + channel, or + "list." + list id
_ACTION_KEYS = ("subscribe", "unsubscribe", "suppress", "lists", "group_lists")
_WHEN_KEYS = ("type", "event", "pattern", "regex", "traits")


@dataclass(frozen=True, slots=True)
class Asks:
    """The changes a call asks for its person: channels to subscribe (to `list_id`, if any) and
    to unsubscribe, suppression (True: suppress the email, False: lift it), lists to join and
    to leave."""

    subscribe: tuple[str, ...] = ()
    list_id: str | None = None
    unsubscribe: tuple[str, ...] = ()
    suppress: bool | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.subscribe or self.unsubscribe or self.suppress is not None
            or self.add or self.remove
        )  # fmt: skip

    def marks(self) -> dict[str, str]:
        """Trait key → what changes there: each channel (suppression counts as email) and
        each list."""
        out = dict.fromkeys((MARK + c for c in self.subscribe), "subscribed")
        out.update(dict.fromkeys((MARK + c for c in self.unsubscribe), "unsubscribed"))
        if self.suppress is not None:
            out.setdefault(MARK + "email", "suppressed" if self.suppress else "unsuppressed")
        out.update(dict.fromkeys((MARK + "list." + i for i in self.add), "added"))
        out.update(dict.fromkeys((MARK + "list." + i for i in self.remove), "removed"))
        return out


NO_ASKS = Asks()


def consent_traits(asks: Asks, message_id: str, called_at: float) -> dict[str, Any]:
    """The marks this call writes in its person's traits: each changed key names the call and
    its time."""
    return {
        key: {"change": change, "call": message_id, "at": called_at}
        for key, change in asks.marks().items()
    }


def still_current(asks: Asks, traits: dict[str, Any], called_at: float) -> tuple[Asks, list[str]]:
    """`asks` without the changes a newer call superseded (the person's mark there is newer
    than this call), and the superseded keys' names ("email", "sms", "list") for counting."""

    def mine(key: str) -> bool:
        mark = traits.get(MARK + key)
        if not isinstance(mark, dict):
            return True
        at = mark.get("at")  # absent in marks of an older release: they supersede nothing
        return not isinstance(at, int | float) or at <= called_at

    overtaken = [key for key in (*asks.subscribe, *asks.unsubscribe) if not mine(key)]
    suppress = asks.suppress
    if suppress is not None and not mine("email"):
        suppress = None
        overtaken.append("email")
    add = tuple(i for i in asks.add if mine("list." + i))
    remove = tuple(i for i in asks.remove if mine("list." + i))
    overtaken += ["list"] * (len(asks.add) + len(asks.remove) - len(add) - len(remove))
    current = Asks(
        tuple(c for c in asks.subscribe if mine(c)),
        asks.list_id,
        tuple(c for c in asks.unsubscribe if mine(c)),
        suppress,
        add,
        remove,
    )
    return current, overtaken


@dataclass(frozen=True, slots=True)
class ConsentRule:
    """One rule: which calls (`when`, `traits` values) and what it asks (`options`, and for
    group calls `group_lists`: groupId → list id)."""

    when: Selector
    traits: dict[str, Any]
    options: KlaviyoOptions
    group_lists: dict[str, str] = field(default_factory=dict)

    def matches(self, call: Call) -> bool:
        if not self.when.matches(call):
            return False
        if not self.traits:
            return True
        own = call.type == "identify" or call.type == "delete"
        traits = call.traits if own else call.context.get("traits")
        if not isinstance(traits, dict):
            return False
        return all(k in traits and traits[k] == v for k, v in self.traits.items())


@dataclass(frozen=True)
class ConsentRules:
    """The rules of a consent file (none: only per-call options ask anything)."""

    rules: tuple[ConsentRule, ...] = ()

    def asks(self, call: Call) -> Asks:
        """What the call asks, rules first (file order), then its own options."""
        own = call.options
        if not self.rules:
            if own is NO_OPTIONS:  # the usual call: nothing to work out
                return NO_ASKS
            return _merge([own], call) if _asks_something(own) else NO_ASKS
        sources: list[KlaviyoOptions | dict[str, str]] = []
        for rule in self.rules:
            if rule.matches(call):
                sources.append(rule.options)
                if rule.group_lists:
                    sources.append(rule.group_lists)
        if _asks_something(own):
            sources.append(own)
        return _merge(sources, call) if sources else NO_ASKS

    def may_ask(self, call: Call) -> bool:
        """Whether the call could ask something, judged on type, name and options alone (a
        rule's trait values unread): a call routing filters is decoded in full when it may."""
        return _asks_something(call.options) or any(r.when.matches(call) for r in self.rules)


def _asks_something(options: KlaviyoOptions) -> bool:
    return bool(
        options.subscribe or options.unsubscribe or options.suppress is not None
        or options.lists.add or options.lists.remove
    )  # fmt: skip


def _merge(sources: list[KlaviyoOptions | dict[str, str]], call: Call) -> Asks:
    """Apply each source in order: the later one wins per channel, list and suppression."""
    channels: dict[str, bool] = {}
    lists: dict[str, bool] = {}
    list_id: str | None = None
    suppress: bool | None = None
    for source in sources:
        if isinstance(source, dict):  # a rule's group_lists
            mapped = source.get(call.group_id or "") if call.type == "group" else None
            if mapped is not None:
                lists[mapped] = True
            continue
        if source.subscribe is not None:
            for channel in CHANNELS:
                if getattr(source.subscribe, channel):
                    channels[channel] = True
            list_id = source.subscribe.list_id
        for channel in source.unsubscribe:
            channels[channel] = False
        if source.suppress is not None:
            suppress = source.suppress
        for list_ in source.lists.add:
            lists[list_] = True
        for list_ in source.lists.remove:
            lists[list_] = False
    subscribe = tuple(c for c in CHANNELS if channels.get(c) is True)
    return Asks(
        subscribe,
        list_id if subscribe else None,
        tuple(c for c in CHANNELS if channels.get(c) is False),
        suppress,
        tuple(i for i, on in lists.items() if on),
        tuple(i for i, on in lists.items() if not on),
    )


# the file ------------------------------------------------------------------------------------


def load_consent_rules(path: str | Path) -> ConsentRules:
    """Read and validate a consent rules file (YAML or JSON), see examples/consent.yaml."""
    document = load_document(path, ConsentConfigError)
    unknown = sorted(set(document) - {"rules"})
    if unknown:
        raise ConsentConfigError(f"{path}: unknown top-level field(s) {unknown}; use rules")
    entries = document.get("rules")
    if not isinstance(entries, list):
        raise ConsentConfigError(f"{path}: field 'rules': must be a list of rules")
    return ConsentRules(
        tuple(_rule(entry, f"{path}: rules[{i}]") for i, entry in enumerate(entries))
    )


def _rule(entry: Any, where: str) -> ConsentRule:
    if not isinstance(entry, dict):
        raise ConsentConfigError(f"{where}: must be a mapping with 'when' and an action")
    extra = sorted(set(entry) - {"when", *_ACTION_KEYS})
    if extra:
        raise ConsentConfigError(
            f"{where}: unknown field(s) {extra}; use when, {', '.join(_ACTION_KEYS)}"
        )
    if not any(entry.get(key) is not None for key in _ACTION_KEYS):
        raise ConsentConfigError(f"{where}: asks nothing; give one of {', '.join(_ACTION_KEYS)}")
    when = entry.get("when") or {}
    if not isinstance(when, dict):
        raise ConsentConfigError(f"{where}: field 'when': must be a mapping")
    unknown = sorted(set(when) - set(_WHEN_KEYS))
    if unknown:
        raise ConsentConfigError(
            f"{where}: field 'when': unknown key(s) {unknown}; use {', '.join(_WHEN_KEYS)}"
        )
    if when.get("type") == "delete":
        raise ConsentConfigError(f"{where}: field 'when.type': a delete call asks no consent")
    selector = selector_from({k: v for k, v in when.items() if k != "traits"}, where,
                             ConsentConfigError)  # fmt: skip
    traits = when.get("traits") or {}
    if not isinstance(traits, dict) or not all(isinstance(k, str) and k for k in traits):
        raise ConsentConfigError(f"{where}: field 'when.traits': must map trait names to values")
    raw = {k: entry[k] for k in ("subscribe", "unsubscribe", "suppress", "lists") if k in entry}
    try:
        options = parse_options(raw)
    except DecodeError as exc:  # the per-call options' own checks, named for this file
        message = str(exc).replace("integrations.Klaviyo.", "field '", 1)
        message = message.replace(":", "':", 1) if message.startswith("field '") else message
        raise ConsentConfigError(f"{where}: {message}") from None
    group_lists = entry.get("group_lists") or {}
    if not isinstance(group_lists, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in group_lists.items()
    ):
        raise ConsentConfigError(f"{where}: field 'group_lists': must map groupId to a list id")
    if group_lists and selector.type != "group":
        raise ConsentConfigError(
            f"{where}: field 'group_lists': only for group calls (when: {{type: group}})"
        )
    return ConsentRule(selector, dict(traits), options, dict(group_lists))


def check_client_mode(rules: ConsentRules, path: str) -> None:
    """In client mode (a public key) Klaviyo only takes subscriptions, each to a list:
    `ConsentConfigError` for the first rule that asks more."""
    for index, rule in enumerate(rules.rules):
        where = f"{path}: rules[{index}]"
        options = rule.options
        refused = [
            name
            for name, asked in (
                ("unsubscribe", bool(options.unsubscribe)),
                ("suppress", options.suppress is not None),
                ("lists", bool(options.lists.add or options.lists.remove)),
                ("group_lists", bool(rule.group_lists)),
            )
            if asked
        ]
        if refused:
            raise ConsentConfigError(
                f"{where} ({refused[0]}): KLAVIYO_MODE=client can only subscribe "
                "(POST /client/subscriptions); unsubscribe, suppress and lists need server mode"
            )
        if options.subscribe is not None and options.subscribe.list_id is None:
            raise ConsentConfigError(
                f"{where} (subscribe): KLAVIYO_MODE=client subscribes to a list only: "
                "give subscribe.list_id"
            )
