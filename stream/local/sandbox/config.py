"""Sandbox settings: one immutable object, validated when it is built."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

OPENAPI_DIR = Path(__file__).resolve().parent / "openapi"
"""The vendored Klaviyo OpenAPI slices (revision 2026-07-15, MIT) the sandbox validates against."""

DEFAULT_API_KEY = "pk_sandbox_0000000000000000000000000000"
# Klaviyo's published revisions: "the revision passed in must be a valid revision"
REVISIONS = (
    "2023-01-24", "2023-02-22", "2023-06-15", "2023-07-15", "2023-09-15", "2023-10-15",
    "2023-12-15", "2024-02-15", "2024-05-15", "2024-06-15", "2024-07-15", "2024-10-15",
    "2025-01-15", "2025-04-15", "2025-07-15", "2025-10-15", "2026-01-15", "2026-04-15",
    "2026-07-15", "2026-10-15",
)
DEFAULT_PUBLIC_KEY = "SBXPUB"
OPT_IN_PROCESSES = ("single_opt_in", "double_opt_in")
MAX_DELAY_SECONDS = 3600.0
"""The longest merge, deletion or job delay the sandbox accepts."""
DEFAULT_ACCOUNT = "default"
_ACCOUNT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class SeedList:
    """A list the sandbox account has from the start (and again after a reset)."""

    id: str
    name: str
    double_opt_in: bool = False


@dataclass(frozen=True)
class SandboxAccount:
    """One Klaviyo account the sandbox serves, told apart from the others by its keys: its own
    profiles, events, lists, catalog, rate limits, fault injection, stats and request log.

    `rate_limit_factor` scales every limit (an account whose limits differ from the published
    ones: 0.5 halves each window's quota; `RateLimit-Limit` says so, as Klaviyo's does).
    `scopes` are what its private keys may do (`profiles:read`, `events:write`, …; a `:write`
    scope grants `:read`); None is a full-access key. A request outside them is a 403."""

    name: str
    api_keys: tuple[str, ...] = ()
    public_keys: tuple[str, ...] = ()
    rate_limit_factor: float = 1.0
    scopes: tuple[str, ...] | None = None
    lists: tuple[SeedList, ...] = ()

    def __post_init__(self) -> None:
        if not _ACCOUNT_NAME.fullmatch(self.name):
            raise ValueError(f"SandboxAccount.name {self.name!r}: a-z, 0-9 and '-' only")
        if not self.api_keys and not self.public_keys:
            raise ValueError(f"SandboxAccount {self.name}: give a private or a public key")
        if not 0 < self.rate_limit_factor <= 100:
            raise ValueError(f"SandboxAccount {self.name}: rate_limit_factor must be in (0, 100]")
        _check_lists(self.lists, f"SandboxAccount {self.name}.lists")


def _check_lists(lists: tuple[SeedList, ...], where: str) -> None:
    ids = [seed.id for seed in lists]
    if any(not list_id or not list_id.isalnum() for list_id in ids) or len(set(ids)) < len(ids):
        raise ValueError(f"{where}: ids must be distinct, non-empty, alphanumeric")


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox listens, which keys it accepts, and how hostile it is.

    `time_scale` shrinks every rate-limit window (0.1 → a 1 s burst window lasts 0.1 s) so
    benchmarks can exercise throttling quickly. `fault_rate` is the share of API requests
    answered with a 500, 503, 429 or a dropped connection instead of being served.

    `merge_delay_seconds`: Klaviyo's profile-merge only queues a task; the sandbox applies it
    this long after the 201 (0: on the next turn of the event loop, still after the answer).
    `deletion_delay_seconds` does the same for data-privacy deletion jobs.
    `job_delay_seconds`: Klaviyo answers event and profile jobs (events, bulk events, profile
    bulk imports, subscription and suppression jobs, client profiles and subscriptions) with a
    202 and applies them later; the sandbox validates them at once and applies them this long
    after the answer, in the order accepted (0: before the answer).
    `catalog_job_seconds` (+ `catalog_job_seconds_per_resource` per resource), times
    `time_scale`: how long a catalog bulk job takes from 202 to complete; at most
    `catalog_jobs_cap` of them are in progress at once (Klaviyo: 500). `lists` are the
    account's lists at start; `default_opt_in_process` is the account setting a subscription
    without a list follows (and a list created without one gets).

    `api_keys`, `public_keys` and `lists` are the account named `default`; `accounts` are
    more accounts served at once (`SandboxAccount`), each its own world, told apart by key.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    public_keys: tuple[str, ...] = (DEFAULT_PUBLIC_KEY,)
    rate_limits: bool = True
    time_scale: float = 1.0
    fault_rate: float = 0.0
    fault_seed: int | None = None
    request_log_limit: int = 100_000
    revisions: tuple[str, ...] = REVISIONS  # the published revisions it accepts
    openapi_dir: Path = field(default=OPENAPI_DIR)
    merge_delay_seconds: float = 1.0
    deletion_delay_seconds: float = 1.0
    catalog_job_seconds: float = 2.0
    catalog_job_seconds_per_resource: float = 0.01
    catalog_jobs_cap: int = 500
    job_delay_seconds: float = 0.0
    lists: tuple[SeedList, ...] = ()
    default_opt_in_process: str = "single_opt_in"
    accounts: tuple[SandboxAccount, ...] = ()

    def __post_init__(self) -> None:
        if not self.api_keys:
            raise ValueError("SandboxConfig.api_keys: at least one private key is required")
        if self.time_scale <= 0:
            raise ValueError("SandboxConfig.time_scale must be > 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("SandboxConfig.fault_rate must be within [0, 1]")
        if self.request_log_limit < 0:
            raise ValueError("SandboxConfig.request_log_limit must be >= 0")
        if self.catalog_jobs_cap < 1:
            raise ValueError("SandboxConfig.catalog_jobs_cap must be >= 1")
        names = ("merge_delay_seconds", "deletion_delay_seconds", "job_delay_seconds",
                 "catalog_job_seconds", "catalog_job_seconds_per_resource")  # fmt: skip
        for name in names:
            if not 0 <= getattr(self, name) <= MAX_DELAY_SECONDS:
                raise ValueError(f"SandboxConfig.{name} must be within [0, {MAX_DELAY_SECONDS:g}]")
        if self.default_opt_in_process not in OPT_IN_PROCESSES:
            raise ValueError(
                f"SandboxConfig.default_opt_in_process must be one of {OPT_IN_PROCESSES}"
            )
        _check_lists(self.lists, "SandboxConfig.lists")
        if not Path(self.openapi_dir).is_dir():
            raise ValueError(f"SandboxConfig.openapi_dir: {self.openapi_dir} is not a directory")
        every = self.all_accounts()
        account_names = [account.name for account in every]
        if len(set(account_names)) < len(account_names):
            raise ValueError("SandboxConfig.accounts: names must be distinct (and not 'default')")
        keys = [k for account in every for k in (*account.api_keys, *account.public_keys)]
        if len(set(keys)) < len(keys):
            raise ValueError("SandboxConfig.accounts: a key belongs to one account only")

    def all_accounts(self) -> tuple[SandboxAccount, ...]:
        """The default account (from `api_keys`, `public_keys`, `lists`), then `accounts`."""
        default = SandboxAccount(DEFAULT_ACCOUNT, self.api_keys, self.public_keys,
                                 lists=self.lists)  # fmt: skip
        return (default, *self.accounts)
