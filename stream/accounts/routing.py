"""Which accounts a call goes to, and why: a pure function of (topic, headers, call).

Order of decisions:

1. a record replayed for one account (`dlq replay` sets `klaviyo-stream.account`) goes to that
   account only: the others had their copy;
2. a `delete` call goes to every account (a person's data may sit in several brands), unless
   the accounts file says `deletes: routed`;
3. otherwise accounts are tried in file order: the first that matches takes the record, and
   every account marked `fan-out: true` that matches takes a copy too (whether it comes
   before or after the first);
4. a record no account takes is filtered (counted with reason `no_account`) or dead-lettered,
   as `unmatched:` says.

Without an accounts file every record is the implicit account's. `call` is None for a record
that has no call (a catalog record): field rules never match it. Reasons name the rule that
matched (configured values only), never a value of the record. `Router` makes every
decision's routes and reasons once; `bench/routing.py` measures the cost per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from stream.accounts.config import (
    ACCOUNT_HEADER,
    Account,
    Accounts,
    FieldPath,
    Rule,
    Unmatched,
)
from stream.core.calls import Call, Headers
from stream.rules.transform import get_field

REPLAY_HEADER = "klaviyo-stream.account"  # set by `dlq replay`: this account only
NO_ACCOUNT = "no_account"  # the filter reason (a metric label) of a record no account takes

Via = Literal["all", "topic", "header", "field", "delete", "replay"]


@dataclass(frozen=True, slots=True)
class Route:
    """One account a record goes to: `via` is the bounded kind (a metric label), `why` the
    sentence `test-event` prints."""

    account: str
    via: Via
    why: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a record goes: its routes (one per account copy), or none and what then."""

    routes: tuple[Route, ...]
    unmatched: Unmatched | None = None  # set when `routes` is empty

    @property
    def accounts(self) -> tuple[str, ...]:
        return tuple(r.account for r in self.routes)

    @property
    def reason(self) -> str:
        """One line: each account and why, or why none."""
        if not self.routes:
            verdict = "dead-lettered" if self.unmatched == "dead-letter" else "filtered"
            return f"no account matched: {verdict} ({NO_ACCOUNT})"
        return "; ".join(f"{r.account} ({r.why})" for r in self.routes)


def header_value(headers: Headers | None, name: str) -> str | None:
    """The last value of header `name` as text (Kafka allows repeats; the last one wins)."""
    found: str | None = None
    for key, value in headers or ():
        if key == name and value is not None:
            found = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return found.strip() if found is not None else None


class Router:
    """Routing for one `Accounts`, its decisions and reasons made once: what the engine keeps
    and calls per record (`route` below builds one per `Accounts` and keeps it)."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        names = accounts.names
        self._only = Decision((Route(names[0], "all", "the only account"),))
        self._none = Decision((), accounts.unmatched)
        self._replays = {
            n: Decision((Route(n, "replay", f"replayed for {n} only"),)) for n in names
        }
        every = tuple(Route(n, "delete", "a delete goes to every account") for n in names)
        self._deletes = Decision(every) if accounts.deletes == "every-account" else None
        # per account: whether it takes fan-out copies, and (rule, its route and decision)
        self._table = tuple((a.fan_out, _compiled(a)) for a in accounts)

    def route(self, topic: str, headers: Headers | None, call: Call | None) -> Decision:
        """The accounts (topic, headers, call) goes to, each with its reason."""
        if self.accounts.implicit:
            return self._only
        replay = header_value(headers, REPLAY_HEADER) if headers else None
        if replay is not None:
            return self._replays.get(replay, self._none)
        if self._deletes is not None and call is not None and call.type == "delete":
            return self._deletes
        asked = header_value(headers, ACCOUNT_HEADER) if headers else None
        first: Decision | None = None
        routes: list[Route] = []
        fields: dict[FieldPath, str | None] = {}
        for fan_out, rules in self._table:
            if first is not None and not fan_out:
                continue
            for rule, decision in rules:
                if rule is None or _holds(rule, topic, asked, call, fields):
                    routes.append(decision.routes[0])
                    if first is None and not fan_out:
                        first = decision
                    break
        if not routes:
            return self._none
        if len(routes) == 1:
            return first or Decision(tuple(routes))
        return Decision(tuple(routes))


def _compiled(account: Account) -> tuple[tuple[Rule | None, Decision], ...]:
    """Each rule of `account` (None: `match: all`) with the one-route decision it makes."""
    fan = ", fan-out" if account.fan_out else ""
    if account.rules is None:
        return ((None, Decision((Route(account.name, "all", "match: all" + fan),))),)
    many = len(account.rules) > 1
    return tuple(
        (rule, Decision((Route(account.name, _via(rule),
                               (f"rule {i + 1}: " if many else "") + rule.describe() + fan),)))
        for i, rule in enumerate(account.rules)
    )  # fmt: skip


_ROUTERS: dict[int, Router] = {}


def route(accounts: Accounts, topic: str, headers: Headers | None, call: Call | None) -> Decision:
    """The accounts (topic, headers, call) goes to, each with its reason (a `Router` per
    `Accounts`, made on first use)."""
    router = _ROUTERS.get(id(accounts))
    if router is None or router.accounts is not accounts:
        if len(_ROUTERS) > 64:
            _ROUTERS.clear()
        router = _ROUTERS[id(accounts)] = Router(accounts)
    return router.route(topic, headers, call)


def _holds(
    rule: Rule,
    topic: str,
    asked: str | None,
    call: Call | None,
    fields: dict[FieldPath, str | None],
) -> bool:
    """Whether every condition of `rule` holds; `fields` keeps the call's field values read so
    far (accounts routed by one field read it once per record)."""
    if rule.topics is not None and topic not in rule.topics:
        return False
    if rule.header is not None and (asked is None or asked not in rule.header):
        return False
    if rule.field is not None:
        if call is None:
            return False
        if rule.field in fields:
            value = fields[rule.field]
        else:
            value = fields[rule.field] = _field_text(call, rule.field)
        return value is not None and value in rule.equals
    return True


def _field_text(call: Call, path: FieldPath) -> str | None:
    """A field's value as routing compares it: a string, or an integer's digits; else None."""
    found, value = get_field(call, path)
    if not found or isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def _via(rule: Rule) -> Via:
    """The most specific condition of a rule names how it routed."""
    if rule.field is not None:
        return "field"
    if rule.header is not None:
        return "header"
    if rule.topics is not None:
        return "topic"
    return "all"


def needs_call(accounts: Accounts) -> bool:
    """True when some rule reads a field of the call: routing must wait for the decode (else
    topic and headers decide, and a record can be routed before it is decoded)."""
    return any(
        rule.field is not None for account in accounts for rule in (account.rules or ())
    ) or (accounts.deletes == "every-account" and not accounts.implicit)


def any_hipaa(accounts: Accounts, names: Sequence[str]) -> bool:
    """True when one of `names` is in HIPAA mode: the dead letter of a record going to them
    is written redacted (a fan-out spanning HIPAA and other accounts takes the strictest)."""
    return any(accounts[name].hipaa_mode for name in names)
