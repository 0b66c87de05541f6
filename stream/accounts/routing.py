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
matched (configured values only), never a value of the record.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from stream.accounts.config import ACCOUNT_HEADER, Account, Accounts, Rule, Unmatched
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


def route(accounts: Accounts, topic: str, headers: Headers | None, call: Call | None) -> Decision:
    """The accounts (topic, headers, call) goes to, each with its reason."""
    if accounts.implicit:
        return _only(accounts.accounts[0].name)
    replay = header_value(headers, REPLAY_HEADER)
    if replay is not None:
        if replay in accounts:
            return Decision((Route(replay, "replay", f"replayed for {replay} only"),))
        return Decision((), accounts.unmatched)
    if call is not None and call.type == "delete" and accounts.deletes == "every-account":
        return Decision(tuple(Route(a.name, "delete", "a delete goes to every account")
                              for a in accounts))  # fmt: skip
    asked = header_value(headers, ACCOUNT_HEADER)
    routes: list[Route] = []
    taken = False
    for account in accounts:
        if taken and not account.fan_out:
            continue
        found = _matches(account, topic, asked, call)
        if found is None:
            continue
        routes.append(found)
        taken = taken or not account.fan_out
    if not routes:
        return Decision((), accounts.unmatched)
    return Decision(tuple(routes))


@functools.cache
def _only(name: str) -> Decision:
    """The one decision of a deployment without an accounts file (made once)."""
    return Decision((Route(name, "all", "the only account"),))


def _matches(account: Account, topic: str, asked: str | None, call: Call | None) -> Route | None:
    """The route when one of `account`'s rules holds for the record (the first that does)."""
    if account.rules is None:
        return Route(account.name, "all", "match: all" + (", fan-out" if account.fan_out else ""))
    for index, rule in enumerate(account.rules):
        if _holds(rule, topic, asked, call):
            where = f"rule {index + 1}: " if len(account.rules) > 1 else ""
            fan = ", fan-out" if account.fan_out else ""
            return Route(account.name, _via(rule), where + rule.describe() + fan)
    return None


def _holds(rule: Rule, topic: str, asked: str | None, call: Call | None) -> bool:
    if rule.topics is not None and topic not in rule.topics:
        return False
    if rule.header is not None and (asked is None or asked not in rule.header):
        return False
    if rule.field is not None:
        if call is None:
            return False
        found, value = get_field(call, rule.field)
        if not found or isinstance(value, bool) or not isinstance(value, str | int):
            return False
        return str(value) in rule.equals
    return True


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
