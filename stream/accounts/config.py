"""The accounts file (`ACCOUNTS_FILE`): which Klaviyo accounts one consumer group serves.

A YAML or JSON file lists accounts, each with a name (`[a-z0-9-]`, used in metrics, headers
and state), its private key as a *reference* (`{env: VAR}` or `{file: /path}`, never the key
itself), and optionally its own revision, connection mode, rate share and rule files (event
definitions, transformations, HIPAA mode, consent rules); what it leaves out is the global
setting's. Each account says which records are its own (`topics`, the `klaviyo-account`
header, a field of the call; `match:` for several alternatives, `match: all` for every
record); `stream.accounts.routing` decides with it. Keys may be spelled `fan-out` or
`fan_out`. Without the file the service is one implicit account, `default`, made of today's
settings, so the engine treats both cases alike. Every mistake is one `AccountsConfigError`
line naming the file, the account and the field; a key is never shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from stream.accounts.model import (
    ACCOUNT_HEADER,
    DEFAULT_ACCOUNT,
    MAX_ACCOUNTS,
    NAME,
    Account,
    Accounts,
    Deletes,
    FieldPath,
    KeyRef,
    Mode,
    Rule,
    Unmatched,
)
from stream.core.errors import AccountsConfigError
from stream.core.settings import Settings
from stream.core.values import check_public_key, check_revision, parse_share
from stream.rules.configfile import load_document

__all__ = [
    "ACCOUNT_HEADER",
    "DEFAULT_ACCOUNT",
    "MAX_ACCOUNTS",
    "Account",
    "Accounts",
    "Deletes",
    "FieldPath",
    "KeyRef",
    "Mode",
    "Rule",
    "Unmatched",
    "implicit_accounts",
    "load_accounts",
    "read_accounts_file",
]
FIELD_ROOTS = ("properties", "traits", "context")

_TOP_KEYS = ("accounts", "unmatched", "deletes", "fan-out", "existing-state")
_RULE_KEYS = ("topics", "header", "field", "equals")
_ACCOUNT_KEYS = (
    "name", "key", "revision", "mode", "public-key", "rate-share", "event-definitions",
    "transformations", "hipaa", "hipaa-config", "consent", "match", "fan-out", *_RULE_KEYS,
)  # fmt: skip


def implicit_accounts(settings: Settings) -> Accounts:
    """The one account of a deployment without an accounts file: today's settings."""
    return Accounts((_from_settings(DEFAULT_ACCOUNT, settings, keeps_state=True),))


def load_accounts(settings: Settings, environ: Mapping[str, str] | None = None) -> Accounts:
    """The accounts the service serves, checked as at start: the file's structure, then every
    account's key (present, a private key, not another account's). Without `ACCOUNTS_FILE`
    the implicit account."""
    if not settings.accounts_file:
        return implicit_accounts(settings)
    accounts = read_accounts_file(settings.accounts_file, settings)
    seen: dict[str, str] = {}
    for account in accounts:
        try:
            key = account.api_key(settings, environ)
        except AccountsConfigError as exc:
            raise AccountsConfigError(
                f"ACCOUNTS_FILE: {accounts.source}: account {account.name}: {exc}"
            ) from None
        if account.mode == "server" and key is None:
            raise AccountsConfigError(
                f"ACCOUNTS_FILE: {accounts.source}: account {account.name}: key: missing "
                "(server mode sends a private key; give key: {env: VAR} or {file: /path})"
            )
        if key is not None:
            other = seen.setdefault(key.get_secret_value(), account.name)
            if other != account.name:
                raise AccountsConfigError(
                    f"ACCOUNTS_FILE: {accounts.source}: accounts {other} and {account.name} "
                    "have the same key: one Klaviyo account served twice would not be kept apart"
                )
    return accounts


def read_accounts_file(path: str, settings: Settings) -> Accounts:
    """The file's accounts and routing, checked for structure (keys are not read: see
    `load_accounts`); `settings` gives the defaults and the topics a rule may name."""
    where = f"ACCOUNTS_FILE: {path}"
    document = _normalized(load_document(path, AccountsConfigError), where)
    unknown = sorted(set(document) - set(_TOP_KEYS))
    if unknown:
        raise AccountsConfigError(
            f"{where}: unknown field(s) {unknown}; use {', '.join(_TOP_KEYS)}"
        )
    entries = document.get("accounts")
    if not isinstance(entries, list) or not entries:
        raise AccountsConfigError(f"{where}: field 'accounts': must be a non-empty list")
    if len(entries) > MAX_ACCOUNTS:
        raise AccountsConfigError(f"{where}: {len(entries)} accounts, at most {MAX_ACCOUNTS}")
    unmatched = _choice(document, "unmatched", ("filter", "dead-letter"), "filter", where)
    deletes = _choice(document, "deletes", ("every-account", "routed"), "every-account", where)
    fan_out = _flag(document, "fan-out", False, where)
    topics = frozenset((*settings.kafka_topics, *settings.catalog_topics))
    accounts: list[Account] = []
    for index, entry in enumerate(entries):
        account = _account(entry, f"{where}: accounts[{index}]", settings, topics, fan_out)
        if account.name in {a.name for a in accounts}:
            raise AccountsConfigError(f"{where}: account {account.name} is named twice")
        accounts.append(account)
    existing = document.get("existing-state")
    if existing is None:
        existing = DEFAULT_ACCOUNT if DEFAULT_ACCOUNT in {a.name for a in accounts} else None
    elif existing not in {a.name for a in accounts}:
        raise AccountsConfigError(
            f"{where}: field 'existing-state': {existing!r} is not an account of this file"
        )
    public = [a.public_key for a in accounts if a.public_key is not None]
    if len(set(public)) < len(public):
        raise AccountsConfigError(f"{where}: two accounts have the same public-key")
    accounts = [replace(a, keeps_state=True) if a.name == existing else a for a in accounts]
    return Accounts(tuple(accounts), unmatched, deletes, source=path)  # type: ignore[arg-type]


def _from_settings(name: str, settings: Settings, keeps_state: bool = False) -> Account:
    """An account made of the global settings (the implicit one; the defaults of the others,
    whose key and public key are their own)."""
    return Account(
        name=name,
        key=KeyRef("setting", "KLAVIYO_API_KEY") if keeps_state else None,
        revision=settings.klaviyo_revision,
        mode=settings.klaviyo_mode,
        public_key=settings.klaviyo_public_key,
        rate_share=settings.klaviyo_rate_share,
        event_definitions_file=settings.event_definitions_file,
        transformations_file=settings.transformations_file,
        hipaa_mode=settings.hipaa_mode,
        hipaa_config_file=settings.hipaa_config_file,
        consent_file=settings.consent_file,
        keeps_state=keeps_state,
    )


def _normalized(document: dict[str, Any], where: str) -> dict[str, Any]:
    """Keys with `_` read as `-` (`fan_out` is `fan-out`); both spellings at once: an error."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        name = str(key).replace("_", "-")
        if name in out:
            raise AccountsConfigError(f"{where}: field '{name}' is given twice")
        out[name] = value
    return out


def _account(
    entry: Any, where: str, settings: Settings, topics: frozenset[str], fan_out: bool
) -> Account:
    if not isinstance(entry, dict):
        raise AccountsConfigError(f"{where}: must be a mapping with a name and a key")
    entry = _normalized(entry, where)
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise AccountsConfigError(
            f"{where}: field 'name': must be 1 to 63 of a-z, 0-9 and '-' (not at either end), "
            "e.g. brand-eu"
        )
    where = f"{where} ({name})"
    unknown = sorted(set(entry) - set(_ACCOUNT_KEYS))
    if unknown:
        raise AccountsConfigError(f"{where}: unknown field(s) {unknown}")
    base = _from_settings(name, settings)
    mode = _choice(entry, "mode", ("server", "client"), base.mode, where)
    public_key = entry.get("public-key")  # never the global one: it names another account
    try:
        revision = check_revision(str(entry.get("revision", base.revision)))
        share = parse_share(entry.get("rate-share", base.rate_share))
        if public_key is not None:
            public_key = check_public_key(str(public_key))
    except ValueError as exc:
        field_name = next(
            (f for f in ("revision", "rate-share", "public-key") if f in entry), "revision"
        )
        raise AccountsConfigError(f"{where}: field '{field_name}': {exc}") from None
    if mode == "client" and public_key is None:
        raise AccountsConfigError(f"{where}: field 'public-key': client mode needs the public key")
    key = _key(entry.get("key"), where)
    return Account(
        name=name,
        key=key,
        revision=revision,
        mode=mode,  # type: ignore[arg-type]
        public_key=public_key,
        rate_share=share,
        event_definitions_file=_file(
            entry, "event-definitions", base.event_definitions_file, where
        ),
        transformations_file=_file(entry, "transformations", base.transformations_file, where),
        hipaa_mode=_flag(entry, "hipaa", base.hipaa_mode, where),
        hipaa_config_file=_file(entry, "hipaa-config", base.hipaa_config_file, where),
        consent_file=_file(entry, "consent", base.consent_file, where),
        rules=_rules(entry, where, topics),
        fan_out=_flag(entry, "fan-out", fan_out, where),
    )


def _key(raw: Any, where: str) -> KeyRef | None:
    """`{env: VAR}`, `{file: /path}`, or their short forms `env:VAR`, `file:/path`."""
    if raw is None:
        return None
    ref: tuple[str, Any] | None = None
    if isinstance(raw, dict) and len(raw) == 1:
        ref = next(iter(raw.items()))
    elif isinstance(raw, str) and raw.partition(":")[0] in ("env", "file"):
        source, _, name = raw.partition(":")
        ref = (source, name)
    if ref is None or ref[0] not in ("env", "file"):
        # never echo `raw`: it may be the key itself
        raise AccountsConfigError(
            f"{where}: field 'key': must name where the key is, {{env: VARIABLE}} or "
            "{file: /path/to/key} (never the key itself in this file)"
        )
    source, name = ref
    if not isinstance(name, str) or not name.strip():
        raise AccountsConfigError(f"{where}: field 'key': {source}: needs a name")
    if source == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
        raise AccountsConfigError(
            f"{where}: field 'key': env: must be an environment variable's name"
        )
    return KeyRef(source, name.strip())  # type: ignore[arg-type]


def _rules(entry: dict[str, Any], where: str, topics: frozenset[str]) -> tuple[Rule, ...] | None:
    """`match: all`, `match: [rules…]`, or the rule's keys on the account itself."""
    inline = {k: entry[k] for k in _RULE_KEYS if entry.get(k) is not None}
    match = entry.get("match")
    if match is not None and inline:
        raise AccountsConfigError(
            f"{where}: give either match: or {', '.join(sorted(inline))} on the account, not both"
        )
    if match == "all":
        return None
    if match is None:
        if not inline:
            raise AccountsConfigError(
                f"{where}: says no records are its own: give topics, header, field (with "
                "equals), match: [rules…] or match: all"
            )
        return (_rule(inline, where, topics, entry["name"]),)
    if not isinstance(match, list) or not match:
        raise AccountsConfigError(f"{where}: field 'match': must be all or a non-empty list")
    return tuple(
        _rule(raw, f"{where}: match[{i}]", topics, entry["name"]) for i, raw in enumerate(match)
    )


def _rule(raw: Any, where: str, topics: frozenset[str], name: str) -> Rule:
    if not isinstance(raw, dict) or not raw:
        raise AccountsConfigError(f"{where}: must be a mapping of {', '.join(_RULE_KEYS)}")
    raw = _normalized(raw, where)
    unknown = sorted(set(raw) - set(_RULE_KEYS))
    if unknown:
        raise AccountsConfigError(
            f"{where}: unknown field(s) {unknown}; use {', '.join(_RULE_KEYS)}"
        )
    topic_set = None
    if "topics" in raw:
        topic_set = _strings(raw["topics"], where, "topics")
        strange = sorted(topic_set - topics)
        if strange:
            raise AccountsConfigError(
                f"{where}: field 'topics': {', '.join(strange)} not in KAFKA_TOPICS or "
                "CATALOG_TOPICS (the service would never read it)"
            )
    header = None
    if "header" in raw:
        header = (
            frozenset({name}) if raw["header"] is True else _strings(raw["header"], where, "header")
        )
    path: FieldPath | None = None
    equals: frozenset[str] = frozenset()
    if "field" in raw or "equals" in raw:
        path = _path(raw.get("field"), where)
        if "equals" not in raw:
            raise AccountsConfigError(
                f"{where}: field 'equals': the values of {raw['field']} "
                "that make a record this account's"
            )
        equals = _strings(raw["equals"], where, "equals", numbers=True)
    return Rule(topic_set, header, path, equals)


def _path(raw: Any, where: str) -> FieldPath:
    parts = tuple(raw.split(".")) if isinstance(raw, str) else ()
    if len(parts) < 2 or parts[0] not in FIELD_ROOTS or not all(parts):
        raise AccountsConfigError(
            f"{where}: field 'field': must look like context.<key>, properties.<key> or "
            "traits.<key> (e.g. context.groupId)"
        )
    return parts


def _strings(raw: Any, where: str, name: str, numbers: bool = False) -> frozenset[str]:
    """A string or a list of strings (and integers, for `equals`) → a set of strings."""
    values = raw if isinstance(raw, list) else [raw]
    kinds = (str, int) if numbers else (str,)
    if not values or not all(
        isinstance(v, kinds) and not isinstance(v, bool) and str(v) for v in values
    ):
        what = "strings or integers" if numbers else "names"
        raise AccountsConfigError(f"{where}: field '{name}': must be one or a list of {what}")
    return frozenset(str(v) for v in values)


def _choice(
    document: dict[str, Any], name: str, allowed: tuple[str, ...], default: str, where: str
) -> str:
    value = document.get(name, default)
    if value not in allowed:
        raise AccountsConfigError(f"{where}: field '{name}': must be one of {', '.join(allowed)}")
    return str(value)


def _flag(document: dict[str, Any], name: str, default: bool, where: str) -> bool:
    value = document.get(name, default)
    if not isinstance(value, bool):
        raise AccountsConfigError(f"{where}: field '{name}': must be true or false")
    return value


def _file(document: dict[str, Any], name: str, default: str | None, where: str) -> str | None:
    """A rule file: absent → the global setting's; null or `none` → no file; else a path that
    must exist (its content is checked where the file is loaded, as the global one is)."""
    if name not in document:
        return default
    value = document[name]
    if value is None or value == "none":
        return None
    if not isinstance(value, str) or not value:
        raise AccountsConfigError(f"{where}: field '{name}': must be a file path, or none")
    if not Path(value).is_file():
        raise AccountsConfigError(f"{where}: field '{name}': no such file: {value}")
    return value
