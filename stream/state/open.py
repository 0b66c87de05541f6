"""Pick the state backend from one URL (the `STATE_URL` setting)."""

from __future__ import annotations

from urllib.parse import urlsplit

from stream.core.errors import ConfigError
from stream.state.base import DEFAULT_DEDUP_WINDOW, HELD_LEASE_SECONDS, StateStore
from stream.state.rules import DEFAULT_LIMITS, Limits

REDIS_PREFIX = "ks:"  # the keys of a single-account deployment (and of the account keeping them)


def open_store(
    url: str,
    dedup_window_seconds: float = DEFAULT_DEDUP_WINDOW,
    lease_seconds: float = HELD_LEASE_SECONDS,
    limits: Limits = DEFAULT_LIMITS,
    prefix: str = REDIS_PREFIX,
) -> StateStore:
    """Open the store named by `url`.

    `sqlite:///relative/path.db`, `sqlite:////abs/path.db`, `sqlite:///:memory:` (tests);
    `redis://host:port/db` or `rediss://…` (TLS), its keys under `prefix` (one store per
    prefix: an account's). Anything else is a ConfigError.
    """
    if dedup_window_seconds <= 0:
        raise ConfigError("DEDUP_WINDOW: must be positive")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ConfigError(f"STATE_URL: expected sqlite:///path/to/file.db, got {url!r}")
        from stream.state.sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :], dedup_window_seconds, lease_seconds, limits)
    if scheme in ("redis", "rediss", "unix"):
        from stream.state.redis import RedisStore

        return RedisStore(
            url, dedup_window_seconds, prefix=prefix, lease_seconds=lease_seconds, limits=limits
        )
    raise ConfigError(f"STATE_URL: unknown scheme in {url!r} (use sqlite:/// or redis://)")
