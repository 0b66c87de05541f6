"""One typed, immutable settings object, read from environment variables and an optional file.

Precedence: environment > settings file (`KLAVIYO_STREAM_CONFIG` or `--config`, YAML or JSON)
> defaults. `load_settings` turns any validation failure into one `ConfigError` line that names
the environment variable, never a traceback. Secrets are `SecretStr`: they print as `**********`;
URLs that may carry a password (`STATE_URL`, `SCHEMA_REGISTRY_URL`) are `MaskedUrl`s, whose repr
hides it. Any librdkafka property passes through (`KAFKA_CONFIG_<PROPERTY>` or a `kafka:` block
in the file); `kafka_client_config` is the one converter to librdkafka's dict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from stream.core.errors import ConfigError
from stream.core.values import (
    KafkaProperties,
    MaskedUrl,
    check_public_key,
    check_revision,
    parse_share,
)

CONFIG_FILE_ENV = "KLAVIYO_STREAM_CONFIG"
SANDBOX_API_KEY = "pk_sandbox_0000000000000000000000000000"
KAFKA_CONFIG_ENV_PREFIX = "KAFKA_CONFIG_"

# librdkafka properties our guarantees depend on: never taken from the passthrough
REFUSED_KAFKA_PROPERTIES = {
    "enable.auto.commit": "offsets are committed by the service, only after delivery",
    "enable.auto.offset.store": "offsets are stored only after delivery (at-least-once)",
    "group.id": "set KAFKA_GROUP_ID",
    "isolation.level": "the service reads committed records only",
    "partition.assignment.strategy": "the service relies on cooperative-sticky assignment",
    "group.remote.assignor": "the service relies on cooperative-sticky assignment",
    "group.protocol": "the service relies on the classic protocol's cooperative-sticky assignment",
}
# confluent-kafka's Python-level keys (callables): not librdkafka properties
_PYTHON_CLIENT_KEYS = frozenset(
    {"logger", "error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_commit", "on_delivery"}
)

CommaList = Annotated[tuple[str, ...], NoDecode]


def kafka_property_of_env(name: str) -> str:
    """`KAFKA_CONFIG_SSL_KEY_LOCATION` → `ssl.key.location` (a dotted name is kept as it is)."""
    tail = name[len(KAFKA_CONFIG_ENV_PREFIX) :]
    return tail.lower() if "." in tail else tail.lower().replace("_", ".")


class Settings(BaseSettings):
    """Everything the service reads from its environment. Names are the env variables."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=False)

    # Kafka
    kafka_bootstrap_servers: str | None = None
    kafka_topics: CommaList = ("analytics",)
    kafka_group_id: str = "klaviyo-stream"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    schema_registry_url: str | None = None
    dlq_topic: str = "klaviyo-stream-dlq"

    # Klaviyo
    klaviyo_api_key: SecretStr | None = None
    klaviyo_base_url: str = "https://a.klaviyo.com"
    klaviyo_revision: str = Field(default="2026-07-15", pattern=r"^\d{4}-\d{2}-\d{2}(\.\w+)?$")
    klaviyo_timeout_seconds: float = Field(default=30.0, gt=0)
    klaviyo_max_connections: int = Field(default=16, ge=1)
    klaviyo_max_in_flight: int = Field(default=8, ge=1)

    # Mapping and identity
    phone_default_region: str = Field(default="US", pattern=r"^[A-Z]{2}$")
    use_email_as_identifier: bool = True
    # identity rules: values one person may hold (external_id: always one), and how far ahead
    # of the moment we read a call its own timestamp may be when it orders identifiers and traits
    identity_emails_per_person: int = Field(default=1, ge=1, le=100)
    identity_phones_per_person: int = Field(default=1, ge=1, le=100)
    max_clock_skew_seconds: float = Field(default=600.0, ge=0)

    # State: dedup window, identity graph, held anonymous calls
    state_url: str = "sqlite:///klaviyo-stream-state.db"
    dedup_window_seconds: float = Field(default=7 * 86400, gt=0)
    hold_anonymous_seconds: float = Field(default=3600, ge=0)
    hold_anonymous_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    expired_anonymous: Literal["drop", "send"] = "drop"
    identity_cache_seconds: float = Field(default=5.0, ge=0)
    # a released held call stays in the store until Klaviyo accepted it; if its sender crashed,
    # it is sent again after this long (longer than any delivery's retries)
    held_lease_seconds: float = Field(default=900.0, gt=0)

    # Batching and flow control
    batch_max_events: int = Field(default=1000, ge=1, le=1000)
    batch_max_profiles: int = Field(default=10_000, ge=1, le=10_000)
    batch_linger_ms: int = Field(default=200, ge=0)
    max_pending_records: int = Field(default=50_000, ge=1)
    # a revoked partition's in-flight work may finish (and be committed) for this long before
    # the partition is handed over; what is still out then is read again by the next owner
    revoke_drain_seconds: float = Field(default=10.0, ge=0)
    # on SIGTERM, how long open batches and in-flight requests may take before they are
    # cancelled (their records stay uncommitted); keep it under the pod's grace period
    shutdown_timeout_seconds: float = Field(default=30.0, ge=0)

    # Operations
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    # /readyz fails when a partition's offset has not moved for this long while records wait
    ready_stall_seconds: float = Field(default=600.0, gt=0)
    # a replica with no partition is ready (a group with more replicas than partitions keeps
    # standbys; a rolling update must not wait for a partition that cannot come)
    ready_without_partitions: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: console when stderr is a terminal (a person), json otherwise (a log pipeline)
    log_format: Literal["auto", "json", "console"] = "auto"

    # Rate-limit governor: replicas split the account's quota (4 replicas → 0.25 each);
    # the time scale matches a sandbox started with --time-scale (1 against Klaviyo)
    # "auto": 1 / the group's members, read from Kafka every 30 s (replicas may scale freely)
    klaviyo_rate_share: float | Literal["auto"] = 1.0
    klaviyo_rate_time_scale: float = Field(default=1.0, gt=0, le=1)
    klaviyo_rate_governor: bool = True  # false only against a sandbox without rate limits

    # Static group membership: a replica restarted with the same id (a pod name) takes its
    # partitions back at once instead of waiting out the session timeout of its crashed self
    kafka_group_instance_id: str | None = None

    # Destination features: event definitions, transformations, HIPAA mode, connection mode
    event_definitions_file: str | None = None
    transformations_file: str | None = None
    page_event_name: str = Field(default="Viewed Page", max_length=128)  # "" = ignore pages
    hipaa_mode: bool = False
    hipaa_config_file: str | None = None
    hipaa_dlq_keep_original: bool = False
    klaviyo_mode: Literal["server", "client"] = "server"
    klaviyo_public_key: str | None = None

    # Several Klaviyo accounts from one consumer group (docs/accounts.md): a YAML or JSON file
    # listing them, their keys (by reference), routing and files; without it the service is
    # the one account the settings above describe. With it, one account's trouble (a refused
    # key, an outage, 429s) parks its items instead of stopping the service: kept and probed,
    # they become dead letters of that account after this long, or past this many (the
    # oldest first; counted in the records they carry) so that no account fills
    # MAX_PENDING_RECORDS with its parked work
    accounts_file: str | None = None
    park_max_seconds: float = Field(default=3600.0, gt=0)
    park_max_items: int = Field(default=10_000, ge=1)

    # Consent, lists and deletion: rules that subscribe, unsubscribe, suppress or change lists
    # (besides each call's own options), and the `custom_source` of the consent we record
    consent_file: str | None = None
    consent_custom_source: str = Field(default="klaviyo-stream", min_length=1, max_length=255)
    # a subscription older than this when read (or any historical import) is checked against
    # the consent Klaviyo holds first: a newer opt-out or suppression there wins
    stale_subscribe_seconds: float = Field(default=3600.0, ge=0)
    # a deletion is confirmed this long after Klaviyo took it: the person's identifiers are
    # looked up and what reappeared (a job accepted before it) deleted again, up to `rounds`
    deletion_settle_seconds: float = Field(default=60.0, ge=0)
    deletion_confirm_rounds: int = Field(default=3, ge=1, le=20)
    # a dead-lettered deletion's erasure entry (its identifiers, for the replay) is kept this long
    erasure_keep_seconds: float = Field(default=7 * 86400, gt=0)
    # a replica that stops publishing its mark is gone after this (plus KLAVIYO_TIMEOUT_SECONDS):
    # deletions stop waiting for it, and the held calls it was sending are taken over
    replica_liveness_seconds: float = Field(default=10.0, gt=0)

    # Calls as clients send them: Segment ecommerce v2 events as Klaviyo's standard metrics
    # (off: names and properties as sent); the metric of mobile screen calls ("" = ignore them)
    ecommerce_metrics: bool = True
    screen_event_name: str = Field(default="Viewed Screen", max_length=128)

    # Catalog: product topics become Klaviyo's catalog (docs/catalog.md). Records in flight are
    # bounded on their own (never pausing events); jobs in progress are at most this many
    # account-wide, times KLAVIYO_RATE_SHARE per replica; a variant waits this long at most for
    # its item's create (an item for its categories'); a Debezium column mapping file
    catalog_topics: CommaList = ()
    catalog_mapping_file: str | None = None
    catalog_max_pending_records: int = Field(default=50_000, ge=1)  # 500 jobs × 100
    catalog_linger_ms: int = Field(default=1000, ge=0)
    catalog_max_jobs_in_progress: int = Field(default=500, ge=1, le=500)
    catalog_dependency_wait_seconds: float = Field(default=60.0, ge=0)
    # a track call of this name (or with `integrations.Klaviyo.back_in_stock`) subscribes its
    # person to a variant's back-in-stock notice ("" = by the option only)
    back_in_stock_event: str = Field(default="Back In Stock Requested", max_length=128)

    # Security at the edges: http:// toward Klaviyo only to loopback, or on purpose (a sandbox)
    klaviyo_allow_http: bool = False

    # Schema Registry authentication and TLS, as confluent-kafka's client takes them
    schema_registry_basic_auth_user_info: SecretStr | None = None  # "user:password"
    schema_registry_bearer_token: SecretStr | None = None
    schema_registry_bearer_logical_cluster: str | None = None
    schema_registry_bearer_identity_pool_id: str | None = None
    schema_registry_ssl_ca_location: str | None = None
    schema_registry_ssl_certificate_location: str | None = None
    schema_registry_ssl_key_location: str | None = None

    # Any librdkafka property (mTLS, OAUTHBEARER, cloud brokers): `KAFKA_CONFIG_<PROPERTY>` or a
    # `kafka:` block in the settings file; the named settings above win over it
    kafka: dict[str, str] = Field(default_factory=dict)

    @field_validator("klaviyo_public_key")
    @classmethod
    def _check_public_key(cls, value: str | None) -> str | None:
        return None if value is None else check_public_key(value)

    @field_validator("kafka_topics", "catalog_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("kafka_topics")
    @classmethod
    def _some_topic(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("empty: name at least one topic, e.g. KAFKA_TOPICS=analytics")
        return value

    @field_validator("klaviyo_revision")
    @classmethod
    def _revision_is_a_date(cls, value: str) -> str:
        return check_revision(value)

    @field_validator("state_url")
    @classmethod
    def _check_state_url(cls, value: str) -> MaskedUrl:
        """Checked here, so a typo is one line at start; never echoes the URL (a password)."""
        parts = urlsplit(value)
        scheme = parts.scheme.lower()
        if scheme == "sqlite":
            if not value.startswith("sqlite:///") or len(value) == len("sqlite:///"):
                raise ValueError("expected sqlite:///path/to/state.db (three slashes, then a path)")
        elif scheme in ("redis", "rediss"):
            try:
                parts.port  # noqa: B018 - parsing it is the check
            except ValueError:
                raise ValueError(
                    "the port is not a number: expected redis://[:password@]host:6379/0"
                ) from None
            if not parts.hostname:
                raise ValueError("no host: expected redis://[:password@]host:6379/0")
            if parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError("the database is not a number: expected redis://host:6379/0")
        elif scheme != "unix":
            raise ValueError(
                f"unknown scheme {scheme!r}: use sqlite:///path/to/state.db or redis://host:6379/0"
            )
        return MaskedUrl(value)

    @field_validator("schema_registry_url")
    @classmethod
    def _mask_registry_url(cls, value: str | None) -> MaskedUrl | None:
        if value is None:
            return None
        if urlsplit(value).scheme.lower() not in ("http", "https", "mock"):
            raise ValueError("expected an http:// or https:// URL")
        return MaskedUrl(value)

    @field_validator("klaviyo_rate_share", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        return parse_share(value)

    @field_validator("kafka", mode="before")
    @classmethod
    def _kafka_properties(cls, value: Any) -> Any:
        """Property names lower-case and dotted; values as librdkafka's strings; refusals."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of librdkafka properties to values")
        out: dict[str, str] = {}
        for raw_name, raw in value.items():
            name = str(raw_name).strip().lower()
            if name in _PYTHON_CLIENT_KEYS:
                raise ValueError(f"{name} is not a librdkafka property")
            if name in REFUSED_KAFKA_PROPERTIES:
                raise ValueError(
                    f"{name} cannot be set: {REFUSED_KAFKA_PROPERTIES[name]} (our guarantees "
                    "depend on it)"
                )
            if isinstance(raw, bool):
                out[name] = "true" if raw else "false"
            elif isinstance(raw, str | int | float):
                out[name] = str(raw)
            else:
                raise ValueError(f"{name}: expected a string, number or boolean")
        return out

    @field_validator("kafka")
    @classmethod
    def _masked_repr(cls, value: dict[str, str]) -> KafkaProperties:
        return KafkaProperties(value)

    @model_validator(mode="after")
    def _check_edges(self) -> Settings:
        """Cross-field checks; messages start with the setting they are about."""
        url = urlsplit(self.klaviyo_base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("KLAVIYO_BASE_URL: expected https://host, e.g. https://a.klaviyo.com")
        if self.schema_registry_bearer_token is not None:
            if self.schema_registry_basic_auth_user_info is not None:
                raise ValueError(
                    "SCHEMA_REGISTRY_BEARER_TOKEN: set it or SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO, "
                    "not both"
                )
            if not self.schema_registry_bearer_logical_cluster:
                raise ValueError(
                    "SCHEMA_REGISTRY_BEARER_LOGICAL_CLUSTER: required with a bearer token "
                    "(the registry's logical cluster id, lsrc-…)"
                )
        shared = sorted(set(self.catalog_topics) & {*self.kafka_topics, self.dlq_topic})
        if shared:
            raise ValueError(
                f"CATALOG_TOPICS: {', '.join(shared)} also in KAFKA_TOPICS or DLQ_TOPIC; a topic"
                " carries either calls or catalog records"
            )
        info = self.schema_registry_basic_auth_user_info
        if info is not None and ":" not in info.get_secret_value():
            raise ValueError("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO: expected user:password")
        if self.schema_registry_ssl_key_location and not (
            self.schema_registry_ssl_certificate_location
        ):
            raise ValueError(
                "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION: required with "
                "SCHEMA_REGISTRY_SSL_KEY_LOCATION"
            )
        return self

    @field_validator("klaviyo_api_key")
    @classmethod
    def _check_private_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("pk_"):
            raise ValueError("a private API key starts with 'pk_'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _KafkaPassthroughEnv(settings_cls),
        ]
        path = os.environ.get(CONFIG_FILE_ENV)
        if path:
            file = Path(path)
            if file.suffix == ".json":
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=file))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=file))
        return tuple(sources)


class _KafkaPassthroughEnv(PydanticBaseSettingsSource):
    """`KAFKA_CONFIG_<PROPERTY>=value` environment variables → the `kafka` passthrough block
    (merged over the file's `kafka:` block: the environment wins, property by property)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        props = {
            kafka_property_of_env(name): value
            for name, value in os.environ.items()
            if name.upper().startswith(KAFKA_CONFIG_ENV_PREFIX)
            and len(name) > len(KAFKA_CONFIG_ENV_PREFIX)
        }
        return {"kafka": props} if props else {}


def known_environment_variable(name: str) -> bool:
    """True when the service reads `name`: a setting, the settings file, or a passthrough."""
    upper = name.upper()
    return (
        upper.lower() in Settings.model_fields
        or upper == CONFIG_FILE_ENV
        or (upper.startswith(KAFKA_CONFIG_ENV_PREFIX) and len(upper) > len(KAFKA_CONFIG_ENV_PREFIX))
    )


def _check_config_file(path: str) -> None:
    """A settings file that is not YAML/JSON, or not a mapping, is one line, not a traceback."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{CONFIG_FILE_ENV}: no such settings file: {path}")
    try:
        text = file.read_text()
        document = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{CONFIG_FILE_ENV}: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); fix the file"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise ConfigError(
            f"{CONFIG_FILE_ENV}: {path} is not valid YAML ({where}{problem}); fix the file"
        ) from None
    if document is not None and not isinstance(document, dict):
        raise ConfigError(
            f"{CONFIG_FILE_ENV}: {path} must be a mapping of setting names to values "
            f"(found a {type(document).__name__})"
        )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once; raise `ConfigError` with one line naming the bad setting."""
    if config_file is not None:
        os.environ[CONFIG_FILE_ENV] = str(config_file)
    path = os.environ.get(CONFIG_FILE_ENV)
    if path:
        _check_config_file(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    """The first validation error as `SETTING: what is wrong` (never the input: a secret)."""
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    loc = first["loc"]
    if not loc:  # a cross-field check: its message names the setting
        return message
    if loc[0] == "kafka":
        return f"{KAFKA_CONFIG_ENV_PREFIX}* (kafka: in the settings file): {message}"
    return f"{str(loc[0]).upper()}: {message}"
