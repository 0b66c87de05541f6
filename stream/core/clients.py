"""What the clients are built from: the settings as librdkafka, Schema Registry and Klaviyo
configurations, and the checks each command makes before it connects.

`kafka_client_config` is the one converter to librdkafka's dict (consumer, producers, admin).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from stream.core.errors import ConfigError
from stream.core.settings import KAFKA_CONFIG_ENV_PREFIX, Settings
from stream.core.values import KafkaProperties, MaskedUrl

KAFKA_LOGGER = "stream.kafka"


def require_production_settings(settings: Settings) -> None:
    """Without `--local` there is no fallback: a broker and an API key must be configured."""
    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS: not set (use `run --local` for a local broker)")
    require_klaviyo_credentials(settings)


def require_klaviyo_credentials(settings: Settings) -> None:
    """Server mode needs the private key; client mode the six-character public key; neither
    goes over plain http:// unless to loopback or on purpose (`KLAVIYO_ALLOW_HTTP`). Checked by
    every command that talks to Klaviyo (not by the Kafka-only ones, `dlq`, `status`)."""
    url = urlsplit(settings.klaviyo_base_url)
    plain = url.scheme == "http" and not _loopback(url.hostname or "")
    if plain and not settings.klaviyo_allow_http:
        raise ConfigError(
            "KLAVIYO_BASE_URL: http:// would send the API key unencrypted; use https://, "
            "or set KLAVIYO_ALLOW_HTTP=true on purpose (a sandbox on a private network)"
        )
    if settings.klaviyo_mode == "client":
        if settings.klaviyo_public_key is None:
            raise ConfigError("KLAVIYO_PUBLIC_KEY: not set (KLAVIYO_MODE=client needs it)")
    elif settings.klaviyo_api_key is None:
        raise ConfigError("KLAVIYO_API_KEY: not set (use `run --local` for the Klaviyo sandbox)")


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """The librdkafka dict shared by consumer, producers and admin clients: the one converter.

    The passthrough properties first, then the named settings over them (a named setting left
    at its default does not override a passthrough property), then the `logger`: librdkafka's
    own log lines go through Python logging (`stream.kafka`) as JSON, never raw to stderr.
    """
    conf: dict[str, Any] = dict(settings.kafka)
    explicit = settings.model_fields_set
    if settings.kafka_bootstrap_servers or "bootstrap.servers" not in conf:
        conf["bootstrap.servers"] = settings.kafka_bootstrap_servers or ""
    if "kafka_security_protocol" in explicit or "security.protocol" not in conf:
        conf["security.protocol"] = settings.kafka_security_protocol
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        conf["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    from stream.telemetry.logs import KafkaLogAdapter

    conf["logger"] = KafkaLogAdapter(logging.getLogger(KAFKA_LOGGER))
    return conf


REGISTRY_TIMEOUT_SECONDS = 10  # per request; a registry that does not answer is an outage
REGISTRY_CLIENT_RETRIES = 1  # the client's own retries (the service waits out the rest)


def schema_registry_config(settings: Settings) -> dict[str, Any] | None:
    """confluent-kafka's SchemaRegistryClient configuration (None without a registry), with a
    request timeout and few retries of its own: its retries sleep on a thread no stop can cut
    short, while the service's own wait (`until_available`) hears SIGTERM."""
    if not settings.schema_registry_url:
        return None
    conf: dict[str, Any] = {
        "url": str(settings.schema_registry_url),
        "timeout": REGISTRY_TIMEOUT_SECONDS,
        "max.retries": REGISTRY_CLIENT_RETRIES,
        "retries.wait.ms": 500,
        "retries.max.wait.ms": 2000,
    }
    if settings.schema_registry_basic_auth_user_info is not None:
        info = settings.schema_registry_basic_auth_user_info.get_secret_value()
        conf["basic.auth.user.info"] = info
    if settings.schema_registry_bearer_token is not None:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = settings.schema_registry_bearer_token.get_secret_value()
        conf["bearer.auth.logical.cluster"] = settings.schema_registry_bearer_logical_cluster
        if settings.schema_registry_bearer_identity_pool_id:
            conf["bearer.auth.identity.pool.id"] = settings.schema_registry_bearer_identity_pool_id
    for prop in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
        value = getattr(settings, "schema_registry_" + prop.replace(".", "_"))
        if value:
            conf[prop] = value
    return conf


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings for a log line or `doctor`: secrets as `**********`, passwords
    inside URLs as `***`, secret-looking passthrough properties masked."""
    shown: dict[str, Any] = {}
    for name, value in settings:
        if isinstance(value, SecretStr):
            shown[name] = "**********"
        elif isinstance(value, MaskedUrl):
            shown[name] = value.masked
        elif isinstance(value, KafkaProperties):
            shown[name] = value.masked()
        elif isinstance(value, tuple):
            shown[name] = list(value)
        else:
            shown[name] = value
    return shown


def check_kafka_properties(settings: Settings) -> None:
    """Let librdkafka itself check every passthrough property's name and value (a client with
    no broker to connect to: nothing leaves the process). Raises `ConfigError` naming it."""
    if not settings.kafka:
        return
    from confluent_kafka import KafkaException, Producer

    from stream.telemetry.logs import KafkaLogAdapter

    quiet = logging.getLogger(KAFKA_LOGGER + ".check")
    quiet.disabled = True  # "no bootstrap.servers", "a consumer property": expected here
    conf = {**settings.kafka, "logger": KafkaLogAdapter(quiet)}
    conf.pop("bootstrap.servers", None)
    try:
        Producer(conf).flush(0)
    except KafkaException as exc:
        raise ConfigError(
            f"{KAFKA_CONFIG_ENV_PREFIX}* (kafka: in the settings file): {exc.args[0].str()} "
            "(see librdkafka's CONFIGURATION.md)"
        ) from None


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
