"""`klaviyo-stream doctor`: is everything set up? One line per check, ✓ or ✗ with the fix.

Checks the settings' files, the passthrough properties and the pinned revision, then each
dependency for real: Kafka (reachable; each topic, catalog topics too, exists, its partitions;
the dead-letter topic
exists, has leaders and this principal may WRITE to it, as the broker's authorizer answers),
the Schema Registry (when set: reachable, credentials accepted, each topic's subjects and the
compatibility they need), the state store (SQLite path writable / Redis answers, its
version) and Klaviyo (an authenticated `GET /api/profiles?page[size]=1`: the key is accepted;
a 403 names the scope Klaviyo says is missing), and whether Klaviyo's mapped metrics (revenue
and six others) point at the metrics this service sends (`stream.ops.revenue`). Every line
goes through `logs.redact`, and URLs are shown masked: no secret is printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from stream.core.clients import (
    check_kafka_properties,
    kafka_client_config,
    require_klaviyo_credentials,
)
from stream.core.errors import ConfigError, StreamError
from stream.core.settings import Settings
from stream.core.values import mask_url, revision_retirement, revision_warning
from stream.intake.registry import auth_setting, classify, registry_client, said
from stream.telemetry.logs import redact

if TYPE_CHECKING:
    from stream.accounts.config import Account

OK, FAIL = "✓", "✗"
# compatibility levels under which every registered version can be read by the newest
COMPATIBLE = frozenset({"BACKWARD", "BACKWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"})
# what the service does with a private key (events, profiles, bulk-import jobs, merges)
NEEDED_SCOPES = ("events:write", "profiles:read", "profiles:write")
_SCOPE = re.compile(r"\b[a-z][a-z-]*:(?:read|write|full)\b")


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{OK if self.ok else FAIL} {self.name}: {self.detail}"
        if self.fix and not self.ok:
            text += f" → fix: {self.fix}"
        return redact(text)


def run_checks(settings: Settings, timeout: float = 10.0) -> Iterator[Check]:
    """Every check, in order; each one catches its own failure. With an accounts file the
    Klaviyo checks (key, scopes, revision, rule files, state) run once per account."""
    if settings.accounts_file:
        yield from _with_accounts(settings, timeout)
        return
    yield from _files(settings)
    yield _revision(settings)
    yield from _kafka(settings, timeout)
    if settings.schema_registry_url:
        yield from _registry(settings)
    yield _state(settings)
    yield from _klaviyo_checks(settings, timeout)


def _klaviyo_checks(settings: Settings, timeout: float) -> Iterator[Check]:
    klaviyo = _klaviyo(settings, timeout)
    yield klaviyo
    if klaviyo.ok and settings.klaviyo_mode == "server" and settings.klaviyo_api_key:
        yield _mapped_metrics(settings, timeout)


def _with_accounts(settings: Settings, timeout: float) -> Iterator[Check]:
    """The accounts file, the checks every account shares (Kafka, registry), then each
    account's own: its key, rule files, revision, state, and Klaviyo (key accepted, scopes)."""
    from stream.accounts.config import read_accounts_file

    path = str(settings.accounts_file)
    try:
        accounts = read_accounts_file(path, settings)
    except ConfigError as exc:
        yield Check("accounts file", False, str(exc), "correct ACCOUNTS_FILE")
        yield from _files(settings, account_files=False)
        yield from _kafka(settings, timeout)
        return
    yield Check("accounts file", True, f"{path}: {len(accounts)} accounts "
                f"({', '.join(accounts.names)}); records of no account: {accounts.unmatched}, "
                f"deletes: {accounts.deletes}")  # fmt: skip
    yield from _files(settings, account_files=False)
    yield from _kafka(settings, timeout)
    if settings.schema_registry_url:
        yield from _registry(settings)
    keys: dict[str, str] = {}  # a key → the first account that has it
    for account in accounts:
        for check in _account_checks(settings, account, keys, timeout):
            yield _of_account(check, account)


def _account_checks(
    settings: Settings, account: Account, keys: dict[str, str], timeout: float
) -> Iterator[Check]:
    """One account's key (readable, a private key, its own), rule files, revision, state and
    Klaviyo, with the settings the service would build its parts from."""
    from stream.accounts.stores import store_location

    key = _account_key(settings, account, keys)
    yield key
    own = account.settings(settings, with_key=key.ok)
    for check in _files(own, shared=False):
        if key.ok or check.name != "klaviyo credentials":  # a key not read: said once
            yield check
    yield _revision(own)
    url, prefix = store_location(str(settings.state_url), account)
    state = _state(own.model_copy(update={"state_url": url}))
    if state.ok and not url.startswith("sqlite"):
        kept = ", the existing state" if account.keeps_state else ""
        state = replace(state, detail=f"{state.detail} (keys {prefix}*{kept})")
    yield state
    if key.ok:
        yield from _klaviyo_checks(own, timeout)


def _account_key(settings: Settings, account: Account, keys: dict[str, str]) -> Check:
    fix = "give key: {env: VARIABLE} or {file: /path} in ACCOUNTS_FILE"
    try:
        key = account.api_key(settings)
    except ConfigError as exc:
        return Check("key", False, str(exc).removeprefix("key: "), f"set it, or correct {fix}")
    if key is None:
        if account.mode == "server":
            return Check("key", False, "missing: server mode sends a private key", fix)
        return Check("key", True, f"none, client mode (public key {account.public_key})")
    other = keys.setdefault(key.get_secret_value(), account.name)
    if other != account.name:
        return Check("key", False, f"{account.key} is account {other}'s key too: one Klaviyo "
                     "account served twice would not be kept apart", "give each its own key")
    return Check("key", True, f"{account.key}, {account.mode} mode")


def _of_account(check: Check, account: Account) -> Check:
    """An account's check: its name first, and fixes naming the account's own fields."""
    fix = check.fix
    for setting, field in (("KLAVIYO_API_KEY", f"the key {account.key}"),
                           ("KLAVIYO_REVISION", "its revision in ACCOUNTS_FILE"),
                           ("EVENT_DEFINITIONS_FILE", "its event-definitions file"),
                           ("CONSENT_FILE", "its consent file")):  # fmt: skip
        fix = fix.replace(setting, field)
    return replace(check, name=f"account {account.name}: {check.name}", fix=fix)


def _guard(name: str, fix: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except StreamError as exc:
        return Check(name, False, str(exc), fix)
    except Exception as exc:  # an unexpected failure is a failed check, not a traceback
        return Check(name, False, f"{type(exc).__name__}: {exc}", fix)


def _files(
    settings: Settings, account_files: bool = True, shared: bool = True
) -> Iterator[Check]:
    """The rule files and credentials (an account's, unless `account_files` is off) and the
    files every account shares (catalog mapping, passthrough properties; unless `shared` is
    off)."""
    from stream.rules.route import router_from_settings
    from stream.rules.transform import transformer_from_settings

    def routes() -> Check:
        router_from_settings(settings)
        return Check("event definitions", True, settings.event_definitions_file or "none (all)")

    def rules() -> Check:
        transformer_from_settings(settings)
        files = [f for f in (settings.transformations_file, settings.hipaa_config_file) if f]
        hipaa = ", HIPAA mode" if settings.hipaa_mode else ""
        return Check("transformations", True, (", ".join(files) or "none") + hipaa)

    def consent() -> Check:
        from stream.engine.pipeline import consent_rules

        found = consent_rules(settings)  # checked against the connection mode too
        detail = (
            f"{settings.consent_file}, {len(found.rules)} rule(s)"
            if settings.consent_file
            else "none (per-call options only)"
        )
        return Check("consent rules", True, detail)

    def properties() -> Check:
        check_kafka_properties(settings)
        return Check("kafka properties", True, f"{len(settings.kafka)} passed through")

    def credentials() -> Check:
        require_klaviyo_credentials(settings)
        return Check("klaviyo credentials", True, f"{settings.klaviyo_mode} mode")

    if account_files:
        yield _guard("event definitions", "correct EVENT_DEFINITIONS_FILE", routes)
        yield _guard("transformations", "correct the file named", rules)
        yield _guard("consent rules", "correct CONSENT_FILE (or KLAVIYO_MODE)", consent)
    if shared and settings.catalog_mapping_file:
        yield _guard("catalog mapping", "correct CATALOG_MAPPING_FILE", lambda: _mapping(settings))
    if shared:
        yield _guard("kafka properties", "correct the KAFKA_CONFIG_* property", properties)
    if account_files:
        yield _guard("klaviyo credentials", "set the key the mode needs", credentials)


def _mapping(settings: Settings) -> Check:
    from stream.catalog.debezium import load_mapping

    found = load_mapping(settings.catalog_mapping_file)
    topics = ", ".join(sorted(found.tables)) if found is not None else "none"
    return Check("catalog mapping", True, f"{settings.catalog_mapping_file}: {topics}")


def _revision(settings: Settings, today: date | None = None) -> Check:
    revision = settings.klaviyo_revision
    retires = revision_retirement(revision)
    warning = revision_warning(revision, today)
    if warning is None:
        return Check("klaviyo revision", True, f"{revision}, supported until {retires}")
    retired = retires < (today or date.today())
    return Check(
        "klaviyo revision",
        not retired,
        warning,
        "set KLAVIYO_REVISION to a current revision and test it against the sandbox",
    )


def _kafka(settings: Settings, timeout: float) -> Iterator[Check]:
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import AclOperation, AdminClient

    servers = settings.kafka_bootstrap_servers or settings.kafka.get("bootstrap.servers")
    if not servers:
        yield Check("kafka", False, "KAFKA_BOOTSTRAP_SERVERS is not set", "set it")
        return
    conf = kafka_client_config(settings)
    admin = AdminClient({**conf, "socket.timeout.ms": int(timeout * 1000)})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        yield Check(
            "kafka",
            False,
            f"{servers} not reachable: {exc.args[0].str()}",
            "check KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL and the credentials",
        )
        return
    finally:
        admin.poll(0)
    brokers = len(metadata.brokers)
    yield Check("kafka", True, f"{servers} reachable, {brokers} broker{'s' if brokers > 1 else ''}")
    for topic in (*settings.kafka_topics, *settings.catalog_topics):
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            yield Check(
                f"topic {topic}",
                False,
                "does not exist",
                f"create it (kafka-topics.sh --create --topic {topic} --partitions 6) "
                "or correct KAFKA_TOPICS",
            )
        else:
            yield Check(f"topic {topic}", True, f"{len(meta.partitions)} partitions")
    dlq = settings.dlq_topic
    name = f"dead-letter topic {dlq}"
    meta = metadata.topics.get(dlq)
    if meta is None or meta.error is not None:
        yield Check(name, False, "does not exist", f"create it or correct DLQ_TOPIC ({dlq})")
        return
    try:
        described = admin.describe_topics(
            TopicCollection([dlq]), include_authorized_operations=True, request_timeout=timeout
        )[dlq].result()
    except KafkaException as exc:
        yield Check(name, False, f"cannot be described: {exc.args[0].str()}", "check ACLs")
        return
    leaderless = [p.id for p in described.partitions if p.leader is None]
    allowed = set(described.authorized_operations or [])
    writable = AclOperation.WRITE in allowed or AclOperation.ALL in allowed
    if leaderless:
        yield Check(name, False, f"partitions {leaderless} have no leader", "check the brokers")
    elif not writable:
        yield Check(
            name,
            False,
            "this principal may not WRITE to it",
            f"grant WRITE on topic {dlq} (kafka-acls.sh --add --operation Write)",
        )
    else:
        yield Check(name, True, f"writable, {len(described.partitions)} partitions")


def _registry(settings: Settings) -> Iterator[Check]:
    """Reachable and our credentials accepted; then, per topic, our subjects and the
    compatibility they have: one that lets a producer register a schema older records cannot
    be read with (NONE, FORWARD) fails."""
    url = mask_url(str(settings.schema_registry_url))
    setting = auth_setting(settings)
    client = registry_client(settings)
    try:
        client.get_schema_types()
    except Exception as exc:
        problem = classify(exc, setting)
        if isinstance(problem, ConfigError):
            yield Check("schema registry", False, f"{url}: {problem}", f"correct {setting}")
            client.close()
            return
        if problem is not None:
            yield Check("schema registry", False, f"{url} not reachable: {problem}",
                        "check SCHEMA_REGISTRY_URL, the network and the CA file")
            client.close()
            return
    yield Check("schema registry", True, f"{url} answers, credentials accepted")
    try:
        yield from _subjects(client, settings, url)
    finally:
        client.close()


def _subjects(client: Any, settings: Settings, url: str) -> Iterator[Check]:
    from stream.intake.avro import NAMESPACE

    def level(subject: str | None) -> str:
        path = "config" if subject is None else f"config/{quote(subject, safe='')}"
        # the effective level (Apicurio answers NONE for a subject without a level of its own)
        answer = client._rest_client.get(path, {"defaultToGlobal": "true"})
        return str(answer.get("compatibilityLevel") or answer.get("compatibility"))

    fix = f'set BACKWARD: PUT {url}/config/SUBJECT {{"compatibility": "BACKWARD"}}'
    try:
        subjects = client.get_subjects()
        default = level(None)
    except Exception as exc:
        yield Check("schema registry subjects", False, f"cannot be listed: {said(exc) or exc}",
                    "give the principal read access to subjects and config")
        return
    for topic in settings.kafka_topics:
        ours = sorted(s for s in subjects if s.startswith(f"{topic}-{NAMESPACE}.")
                      or s == f"{topic}-value")  # fmt: skip
        name = f"subjects of {topic}"
        if not ours:
            yield Check(name, default in COMPATIBLE,
                        f"none yet (producers register them; `klaviyo-stream produce` does), "
                        f"and new subjects get {default} compatibility",
                        fix.replace("/SUBJECT", ""))  # fmt: skip
            continue
        try:
            levels = {s: level(s) for s in ours}
        except Exception as exc:
            yield Check(name, False, f"{len(ours)} present, compatibility not readable: "
                        f"{said(exc) or exc}", "give the principal read access to config")
            continue
        weak = sorted(s for s, found in levels.items() if found not in COMPATIBLE)
        shown = ", ".join(f"{s.rsplit('.', 1)[-1]} {levels[s]}" for s in ours)
        detail = f"{len(ours)} present: {shown}"
        if weak:
            detail += f"; {', '.join(weak)} would take a schema older records cannot be read with"
        yield Check(name, not weak, detail, fix)


def _state(settings: Settings) -> Check:
    url = str(settings.state_url)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return _guard("state store", "make the path writable or change STATE_URL",
                      lambda: _sqlite(url[len("sqlite:///") :]))
    return _guard(
        "state store",
        "check STATE_URL (host, port, password) and that Redis runs",
        lambda: _redis(url),
    )


def _sqlite(path: str) -> Check:
    version = f"SQLite {sqlite3.sqlite_version}"
    if path == ":memory:":
        return Check("state store", True, f"{version}, in memory (tests only)")
    file = Path(path)
    if not file.exists():
        folder = file.parent.resolve()
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            return Check(
                "state store",
                False,
                f"{version}: cannot create {path} ({folder} is not a writable directory)",
                "create the directory or point STATE_URL elsewhere",
            )
        return Check("state store", True, f"{version}, {path} will be created")
    db = sqlite3.connect(path, timeout=5)
    try:
        db.execute("BEGIN IMMEDIATE")  # takes the write lock: writable, not locked by another
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return Check("state store", False, f"{version}, {path}: {exc}",
                     "make the file writable; one process per SQLite file")
    finally:
        db.close()
    return Check("state store", True, f"{version}, {path} writable")


def _redis(url: str) -> Check:
    import redis

    shown = mask_url(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except redis.AuthenticationError:
        return Check("state store", False, f"{shown}: password refused",
                     "correct the password in STATE_URL")
    except redis.RedisError as exc:
        return Check("state store", False, f"{shown}: {exc}",
                     "check STATE_URL and that Redis runs")
    finally:
        client.close()
    return Check("state store", True, f"Redis {version} answers at {shown}")


def _klaviyo(settings: Settings, timeout: float) -> Check:
    return _guard(
        "klaviyo",
        "check KLAVIYO_BASE_URL and the network",
        lambda: asyncio.run(_ask_klaviyo(settings, timeout)),
    )


async def _ask_klaviyo(settings: Settings, timeout: float) -> Check:
    from stream.core.errors import KlaviyoError, KlaviyoUnavailable, Unauthorized
    from stream.klaviyo.client import KlaviyoClient

    base = settings.klaviyo_base_url
    if settings.klaviyo_mode == "client" or settings.klaviyo_api_key is None:
        return Check("klaviyo", True, f"{base}: client mode, no private key to check")
    client = KlaviyoClient(base, settings.klaviyo_api_key, settings.klaviyo_revision,
                           timeout=timeout, max_connections=1)
    async with client:
        try:
            await client.get("/api/profiles?page[size]=1")
        except Unauthorized as exc:
            return _refused(exc)
        except KlaviyoUnavailable as exc:
            return Check("klaviyo", False, f"{base} not reachable: {exc}",
                         "check KLAVIYO_BASE_URL and the network (proxy, firewall)")
        except KlaviyoError as exc:
            return Check("klaviyo", False, f"{base} answered: {exc}",
                         "check KLAVIYO_BASE_URL and KLAVIYO_REVISION")
    return Check("klaviyo", True,
                 f"{base} reachable, API key accepted (revision {settings.klaviyo_revision})")


def _mapped_metrics(settings: Settings, timeout: float) -> Check:
    """Whether Klaviyo reads revenue (and the six others) from the metrics we send."""

    async def ask() -> Check:
        from stream.klaviyo.client import KlaviyoClient
        from stream.ops.revenue import client_request, describe, mappings

        client = KlaviyoClient(
            settings.klaviyo_base_url, settings.klaviyo_api_key, settings.klaviyo_revision,
            timeout=timeout, max_connections=1,
        )  # fmt: skip
        async with client:
            ok, detail = describe(await mappings(client_request(client)))
        return Check("mapped metrics", ok, detail, "run klaviyo-stream setup-metrics")

    return _guard("mapped metrics", "give the key metrics:read", lambda: asyncio.run(ask()))


def _refused(exc: Any) -> Check:
    """A 401/403 as one line: Klaviyo's words, and the missing scope when it names one."""
    said = " ".join(
        str(e.get(k, "")) for e in exc.errors if isinstance(e, dict) for k in ("title", "detail")
    )
    scopes = sorted(set(_SCOPE.findall(said)))
    if exc.status == 403:
        missing = ", ".join(scopes) if scopes else "a scope Klaviyo did not name"
        return Check(
            "klaviyo",
            False,
            f"API key lacks {missing} ({exc})",
            "give the key these scopes in Klaviyo (Settings → API keys): "
            + ", ".join(NEEDED_SCOPES),
        )
    return Check("klaviyo", False, f"API key refused ({exc})",
                 "set KLAVIYO_API_KEY to a valid private key (pk_…)")


def report(checks: list[Check]) -> tuple[str, int]:
    """(the lines to print, the exit code: 0 when every check passed, else 1)."""
    text = "\n".join(c.line() for c in checks)
    failed = sum(not c.ok for c in checks)
    summary = "all checks passed" if not failed else f"{failed} of {len(checks)} checks failed"
    return f"{text}\n{summary}", 0 if not failed else 1
