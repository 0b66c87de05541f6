"""One state store per account: each account's identity graph, dedup window, held calls,
tombstones, erasure entries, consent marks, replica marks and catalog kept apart.

Redis: one database, a key prefix per account (`ks@<account>:`; the `@` never occurs in a
single-account key, all of which start `ks:`). SQLite: a file per account beside
`STATE_URL`'s (`state.db` → `state-<account>.db`). The account that keeps the existing
state (the implicit one, or the file's `existing-state:` / an account named `default`) uses
today's file or prefix, so a deployment moving to an accounts file keeps what it had.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import urlsplit

from stream.accounts.config import Account, Accounts
from stream.core.settings import Settings
from stream.engine.pipeline import identity_limits
from stream.state import StateStore, open_store
from stream.state.open import REDIS_PREFIX

SQLITE = "sqlite:///"


def store_location(state_url: str, account: Account) -> tuple[str, str]:
    """(the URL, the Redis key prefix) of `account`'s state. An in-memory SQLite store is
    one per connection already (tests)."""
    if account.keeps_state:
        return state_url, REDIS_PREFIX
    if urlsplit(state_url).scheme.lower() != "sqlite":
        return state_url, f"ks@{account.name}:"
    path = state_url[len(SQLITE) :]
    if path == ":memory:":
        return state_url, REDIS_PREFIX
    file = PurePosixPath(path)
    return SQLITE + str(file.with_name(f"{file.stem}-{account.name}{file.suffix}")), REDIS_PREFIX


def open_stores(settings: Settings, accounts: Accounts) -> dict[str, StateStore]:
    """Every account's store, opened now with the settings' window, lease and limits; if one
    cannot be opened, those opened before it are closed and the error raised."""
    stores: dict[str, StateStore] = {}
    try:
        for account in accounts:
            url, prefix = store_location(str(settings.state_url), account)
            stores[account.name] = open_store(
                url,
                settings.dedup_window_seconds,
                settings.held_lease_seconds,
                identity_limits(settings),
                prefix=prefix,
            )
    except BaseException:
        for store in stores.values():
            store.close()
        raise
    return stores
