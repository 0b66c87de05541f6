"""The Schema Registry as every command meets it: one client built from the settings, and what
its answers mean.

- `registry_client(settings)`: confluent-kafka's client with the settings' auth and TLS, and a
  timeout (a registry that does not answer is an outage, never a hang).
- `classify(exc, setting)`: 401 and 403 are a setting's fault (`ConfigError`, one line naming
  it); 408, 429, 5xx and transport errors are an outage (`RegistryUnavailable`: wait and ask
  again). Anything else (None) is an answer about the one request: 404 an unknown id, 400 or
  422 a schema the registry will not serve or take; the caller says so with the registry's
  own words (`said`), for that record or that schema only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream.core.errors import ConfigError, RegistryUnavailable, StreamError

if TYPE_CHECKING:
    from stream.core.settings import Settings

OUTAGE_STATUSES = frozenset({408, 429})  # and every 5xx
_NO_BODY = "Unknown Schema Registry Error: "  # confluent-kafka's text for a body that is not JSON
_CLIENT_CERT_ALERTS = ("ALERT_CERTIFICATE_REQUIRED", "ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA")


def registry_client(settings: Settings) -> Any:
    """confluent-kafka's `SchemaRegistryClient` for the settings (None without a registry)."""
    from stream.core.clients import schema_registry_config

    config = schema_registry_config(settings)
    if config is None:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client(config)


def auth_setting(settings: Settings) -> str:
    """The setting a refused request points at: the credentials given, else the URL."""
    if settings.schema_registry_bearer_token is not None:
        return "SCHEMA_REGISTRY_BEARER_TOKEN"
    if settings.schema_registry_basic_auth_user_info is not None:
        return "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"
    return "SCHEMA_REGISTRY_URL"


def said(exc: BaseException) -> str:
    """What the registry said, on one line ("" when its answer had no message: Apicurio's 401
    and 403 have an empty body)."""
    text = str(getattr(exc, "error_message", "") or "")
    if text.startswith(_NO_BODY):
        text = text[len(_NO_BODY) :]
        if text in ("b''", 'b""'):
            return ""
    return " ".join(text.split())[:300]


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a registry's answer (None: no answer, a transport error)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return exc.http_status_code if isinstance(exc, SchemaRegistryError) else None


def classify(exc: BaseException, setting: str) -> StreamError | None:
    """What a failed registry call means for every request (see the module's docstring); None
    when it is about this request only."""
    status = status_of(exc)
    words = said(exc)
    answer = f"{status}: {words}" if words else str(status)
    if status is None:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return ConfigError(
                "SCHEMA_REGISTRY_SSL_CA_LOCATION: the registry's certificate is not trusted"
                " (CERTIFICATE_VERIFY_FAILED)"
            )
        refused = next((alert for alert in _CLIENT_CERT_ALERTS if alert in text), None)
        if refused is not None:  # mutual TLS: the registry refused our certificate, or none
            return ConfigError(
                "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION: the registry refused our client "
                f"certificate ({refused}): set it and SCHEMA_REGISTRY_SSL_KEY_LOCATION"
            )
        return RegistryUnavailable(f"Schema Registry: {type(exc).__name__}: {text[:200]}")
    if status == 401:
        if setting == "SCHEMA_REGISTRY_URL":
            return ConfigError(
                f"SCHEMA_REGISTRY_URL: the Schema Registry wants credentials ({answer}): set "
                "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO or SCHEMA_REGISTRY_BEARER_TOKEN"
            )
        return ConfigError(f"{setting}: the Schema Registry refused our credentials ({answer})")
    if status == 403:
        return ConfigError(
            f"{setting}: the Schema Registry refused access ({answer}): this principal needs "
            "read access to the schemas"
        )
    if status in OUTAGE_STATUSES or status >= 500:
        return RegistryUnavailable(f"Schema Registry answered {answer}")
    if status < 400:  # a redirect httpx does not follow: the URL is not the API's
        return ConfigError(f"SCHEMA_REGISTRY_URL: the Schema Registry answered {answer}")
    return None
