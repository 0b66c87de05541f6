"""One typed, immutable settings object, read from environment variables and an optional file.

Precedence: environment > settings file (`KLAVIYO_STREAM_CONFIG` or `--config`, YAML or JSON)
> defaults. `load_settings` turns any validation failure into one `ConfigError` line that names
the environment variable, never a traceback. Secrets are `SecretStr`: they print as `**********`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from stream.errors import ConfigError

CONFIG_FILE_ENV = "KLAVIYO_STREAM_CONFIG"
SANDBOX_API_KEY = "pk_sandbox_0000000000000000000000000000"

CommaList = Annotated[tuple[str, ...], NoDecode]


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

    # State: dedup window, identity graph, held anonymous calls
    state_url: str = "sqlite:///klaviyo-stream-state.db"
    dedup_window_seconds: float = Field(default=7 * 86400, gt=0)
    hold_anonymous_seconds: float = Field(default=3600, ge=0)
    hold_anonymous_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    expired_anonymous: Literal["drop", "send"] = "drop"
    identity_cache_seconds: float = Field(default=5.0, ge=0)

    # Batching and flow control
    batch_max_events: int = Field(default=1000, ge=1, le=1000)
    batch_max_profiles: int = Field(default=10_000, ge=1, le=10_000)
    batch_linger_ms: int = Field(default=200, ge=0)
    max_pending_records: int = Field(default=50_000, ge=1)
    # a revoked partition's in-flight work may finish (and be committed) for this long before
    # the partition is handed over; what is still out then is read again by the next owner
    revoke_drain_seconds: float = Field(default=10.0, ge=0)

    # Operations
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    # /readyz fails when a partition's offset has not moved for this long while records wait
    ready_stall_seconds: float = Field(default=600.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Rate-limit governor: replicas split the account's quota (4 replicas → 0.25 each);
    # the time scale matches a sandbox started with --time-scale (1 against Klaviyo)
    klaviyo_rate_share: float = Field(default=1.0, gt=0, le=1)
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

    # Calls as clients send them: Segment ecommerce v2 events as Klaviyo's standard metrics
    # (off: names and properties as sent); the metric of mobile screen calls ("" = ignore them)
    ecommerce_metrics: bool = True
    screen_event_name: str = Field(default="Viewed Screen", max_length=128)

    @field_validator("klaviyo_public_key")
    @classmethod
    def _check_public_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("pk_"):
            raise ValueError("this is a private key (pk_…); client mode takes the public key")
        if not re.fullmatch(r"[A-Za-z0-9]{6}", value):
            raise ValueError("a public API key (site ID) is 6 letters or digits, like 'AbC123'")
        return value

    @field_validator("kafka_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_FILE_ENV)
        if path:
            file = Path(path)
            if file.suffix == ".json":
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=file))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once; raise `ConfigError` with one line naming the bad setting."""
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}: no such settings file: {config_file}")
        os.environ[CONFIG_FILE_ENV] = str(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigError(f"{name}: {first['msg']}") from None


def require_production_settings(settings: Settings) -> None:
    """Without `--local` there is no fallback: a broker and an API key must be configured."""
    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set (use `run --local` for a local broker)")
    require_klaviyo_credentials(settings)


def require_klaviyo_credentials(settings: Settings) -> None:
    """Server mode needs the private key; client mode the six-character public key."""
    if settings.klaviyo_mode == "client":
        if settings.klaviyo_public_key is None:
            raise ConfigError("KLAVIYO_PUBLIC_KEY: not set (KLAVIYO_MODE=client needs it)")
    elif settings.klaviyo_api_key is None:
        raise ConfigError("KLAVIYO_API_KEY: not set (use `run --local` for the Klaviyo sandbox)")


def kafka_client_config(settings: Settings) -> dict[str, str]:
    """The librdkafka connection dict shared by consumer, producer and admin: the one converter."""
    conf: dict[str, str] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers or "",
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        conf["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return conf
