"""The accounts' types: an account (its key by reference, revision, mode, share, rule files,
routing rules) and the accounts a deployment serves (`Accounts`), with what routing does
beyond them. Read from the accounts file by `stream.accounts.config`; without one, a single
implicit account made of the settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from stream.core.errors import AccountsConfigError
from stream.core.settings import Settings

DEFAULT_ACCOUNT = "default"
ACCOUNT_HEADER = "klaviyo-account"  # a record's own say: the account it is for
MAX_ACCOUNTS = 100  # bounds the `account` label of every metric (and the state per account)
NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
FIELD_ROOTS = ("properties", "traits", "context")

Unmatched = Literal["filter", "dead-letter"]
Deletes = Literal["every-account", "routed"]
Mode = Literal["server", "client"]
FieldPath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyRef:
    """Where an account's private key is: an environment variable, a file, or (the implicit
    account only) the `KLAVIYO_API_KEY` setting. The reference is not a secret (it is shown);
    the key it leads to is (`resolve` returns a `SecretStr`)."""

    source: Literal["env", "file", "setting"]
    name: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"

    def resolve(
        self, base: Settings | None = None, environ: Mapping[str, str] | None = None
    ) -> SecretStr | None:
        """The key, read now; `AccountsConfigError` (without the key) when absent or not a
        private key. `setting`: `base.klaviyo_api_key`, which may be None (client mode)."""
        if self.source == "setting":
            return None if base is None else base.klaviyo_api_key
        if self.source == "env":
            value = (os.environ if environ is None else environ).get(self.name, "").strip()
            if not value:
                raise AccountsConfigError(f"key: environment variable {self.name} is not set")
        else:
            try:
                value = Path(self.name).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise AccountsConfigError(f"key: cannot read file {self.name} ({reason})") from None
            if not value:
                raise AccountsConfigError(f"key: file {self.name} is empty")
        if not value.startswith("pk_"):
            raise AccountsConfigError(f"key: {self} does not hold a private key (pk_…)")
        return SecretStr(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """One way a record can be an account's: every condition given must hold (a rule without
    any matches every record). `header` holds values of the `klaviyo-account` header; `field`
    a path into the call (`context.groupId`) whose value must be one of `equals`."""

    topics: frozenset[str] | None = None
    header: frozenset[str] | None = None
    field: FieldPath | None = None
    equals: frozenset[str] = frozenset()

    def describe(self) -> str:
        """The rule as a person reads it (configured values only, never a record's)."""
        parts = []
        if self.topics is not None:
            parts.append("topic " + " or ".join(sorted(self.topics)))
        if self.header is not None:
            parts.append(f"header {ACCOUNT_HEADER}: " + " or ".join(sorted(self.header)))
        if self.field is not None:
            parts.append(f"{'.'.join(self.field)} = " + " or ".join(sorted(self.equals)))
        return ", ".join(parts) or "every record"


@dataclass(frozen=True, slots=True)
class Account:
    """One Klaviyo account. Files and flags left out of the accounts file hold the global
    settings' values; `key` None: no private key (client mode). `rules` None: every record
    (`match: all`). `keeps_state`: this account's state is the store a single-account
    deployment used (the same SQLite file or Redis prefix)."""

    name: str
    key: KeyRef | None
    revision: str
    mode: Mode
    public_key: str | None
    rate_share: float | Literal["auto"]
    event_definitions_file: str | None
    transformations_file: str | None
    hipaa_mode: bool
    hipaa_config_file: str | None
    consent_file: str | None
    rules: tuple[Rule, ...] | None = None
    fan_out: bool = False
    keeps_state: bool = False

    def api_key(self, base: Settings, environ: Mapping[str, str] | None = None) -> SecretStr | None:
        """The private key this account sends (None in client mode without one)."""
        return None if self.key is None else self.key.resolve(base, environ)

    def settings(
        self, base: Settings, environ: Mapping[str, str] | None = None, with_key: bool = True
    ) -> Settings:
        """`base` as this account sees it: its key, revision, mode, share and rule files in
        place of the global ones, so every builder that takes `Settings` builds its part.
        `with_key` False leaves the key out (None) instead of reading it (`doctor`, once it
        said the key cannot be read)."""
        try:
            key = self.api_key(base, environ) if with_key else None
        except AccountsConfigError as exc:
            raise AccountsConfigError(f"account {self.name}: {exc}") from None
        return base.model_copy(
            update={
                "klaviyo_api_key": key,
                "klaviyo_revision": self.revision,
                "klaviyo_mode": self.mode,
                "klaviyo_public_key": self.public_key,
                "klaviyo_rate_share": self.rate_share,
                "event_definitions_file": self.event_definitions_file,
                "transformations_file": self.transformations_file,
                "hipaa_mode": self.hipaa_mode,
                "hipaa_config_file": self.hipaa_config_file,
                "consent_file": self.consent_file,
            }
        )


@dataclass(frozen=True, slots=True)
class Accounts:
    """Every account, in file order (routing's order), and what routing does beyond them:
    `unmatched` (a record no account takes is filtered, counted, or dead-lettered) and
    `deletes` (a delete call goes to every account, or is routed like any call). `source` is
    the file (None: the implicit single account)."""

    accounts: tuple[Account, ...]
    unmatched: Unmatched = "filter"
    deletes: Deletes = "every-account"
    source: str | None = None
    _by_name: dict[str, Account] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        self._by_name.update((a.name, a) for a in self.accounts)

    @property
    def implicit(self) -> bool:
        """True without an accounts file: one account, every record, today's settings."""
        return self.source is None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.accounts)

    def __getitem__(self, name: str) -> Account:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self.names)
            raise AccountsConfigError(f"no account named {name!r} (accounts: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Account]:
        return iter(self.accounts)

    def __len__(self) -> int:
        return len(self.accounts)

    def topics_of(self, name: str, all_topics: tuple[str, ...]) -> frozenset[str]:
        """The topics records of account `name` can come from (all of them when a rule of
        it does not name topics): where its traffic is, for its rate share."""
        account = self[name]
        if account.rules is None:
            return frozenset(all_topics)
        found: set[str] = set()
        for rule in account.rules:
            found |= set(all_topics) if rule.topics is None else rule.topics
        return frozenset(found)
