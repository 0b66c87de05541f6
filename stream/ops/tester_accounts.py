"""`test-event --account NAME [--topic T] [--header K=V]`: which account a call goes to, why,
and the settings to test it with.

With an accounts file, the call is routed as the service routes it (`stream.accounts.routing`),
as if it were read from `topic` (the first of `KAFKA_TOPICS` by default) with `headers`; the
tester then runs with the account's own settings (its key, revision, mode, rule files).
`--account` picks the account to test with, also one routing would not choose (said so).
Without the file there is one account, `default`, and nothing is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stream.accounts.config import (
    DEFAULT_ACCOUNT,
    Accounts,
    implicit_accounts,
    load_accounts,
    read_accounts_file,
)
from stream.accounts.routing import route
from stream.core.calls import Headers, normalize
from stream.core.errors import ConfigError, DecodeError
from stream.core.settings import Settings
from stream.ops.produce import fill_missing
from stream.ops.produce_catalog import is_catalog

Print = Callable[[str], None]


def parse_header(text: str) -> tuple[str, str]:
    """`klaviyo-account=brand-b` → ("klaviyo-account", "brand-b")."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{text!r} is not NAME=VALUE (e.g. klaviyo-account=brand-b)")
    return name.strip(), value


def account_for_test(
    settings: Settings,
    call: dict[str, Any],
    *,
    topic: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    account: str | None = None,
    dry_run: bool = False,
    out: Print = print,
) -> Settings | None:
    """The settings to test `call` with (its account's), after printing where routing sends
    it and why; None when no account takes it and none was asked for (nothing to test)."""
    accounts = load_accounts(settings, environ=None) if not dry_run else _structure(settings)
    if accounts.implicit:
        if account not in (None, DEFAULT_ACCOUNT):
            raise ConfigError(
                f"--account {account}: no ACCOUNTS_FILE, the one account is {DEFAULT_ACCOUNT}"
            )
        return settings
    if account is not None:
        accounts[account]  # noqa: B018 - an unknown name is a ConfigError naming the accounts
    read_from = topic or settings.kafka_topics[0]
    try:
        if is_catalog(call):  # a catalog record has no call: topic and headers decide
            decided = route(accounts, read_from, _headers(headers), None)
        else:
            filled = dict(call)
            fill_missing(filled)
            parsed = normalize(filled["type"], filled)
            decided = route(accounts, read_from, _headers(headers), parsed)
    except (DecodeError, KeyError, TypeError):
        decided = None  # the tester says why the call is refused
    if decided is not None:
        out(f"routing (topic {read_from}): {decided.reason}")
    chosen = account or (decided.accounts[0] if decided and decided.accounts else None)
    if chosen is None:
        if decided is not None:
            out("nothing would be sent; --account NAME tests it with an account anyway")
        return None
    if decided is not None and chosen not in decided.accounts:
        out(f"routing would not send it to {chosen}; testing with {chosen} as asked")
    elif decided is not None and len(decided.accounts) > 1:
        others = ", ".join(a for a in decided.accounts if a != chosen)
        out(f"testing with {chosen} (--account {others.split(', ')[0]} tests another copy)")
    else:
        out(f"testing with {chosen}")
    return accounts[chosen].settings(settings, with_key=not dry_run)


def _structure(settings: Settings) -> Accounts:
    """A dry run reads no key: the file's structure is enough."""
    if not settings.accounts_file:
        return implicit_accounts(settings)
    return read_accounts_file(settings.accounts_file, settings)


def _headers(pairs: Sequence[tuple[str, str]]) -> Headers:
    return [(name, value.encode()) for name, value in pairs]
