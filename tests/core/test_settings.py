"""Settings at the edges: passthrough to librdkafka, refusals, masking, revision dates, http://."""

from __future__ import annotations

import io
import json
import logging
from datetime import date
from pathlib import Path

import pytest
from pydantic import SecretStr

from stream.core.clients import (
    check_kafka_properties,
    kafka_client_config,
    masked_settings,
    schema_registry_config,
)
from stream.core.errors import ConfigError
from stream.core.settings import (
    REFUSED_KAFKA_PROPERTIES,
    Settings,
    known_environment_variable,
    load_settings,
)
from stream.core.values import revision_retirement, revision_warning
from stream.telemetry.logs import KafkaLogAdapter, configure_logging

PASSWORD = "s3cr3t-Pa55word"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No KAFKA_CONFIG_* or settings file from the caller's environment."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("KAFKA_CONFIG_") or name.upper() == "KLAVIYO_STREAM_CONFIG":
            monkeypatch.delenv(name)
    return monkeypatch


def test_passthrough_from_env_and_file_env_wins_property_by_property(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(
        "kafka:\n  ssl.key.location: /file/key.pem\n  session.timeout.ms: 10000\n"
        "  enable.ssl.certificate.verification: false\n"
    )
    clean_env.setenv("KAFKA_CONFIG_SSL_KEY_LOCATION", "/env/key.pem")
    clean_env.setenv("KAFKA_CONFIG_SASL_OAUTHBEARER_CLIENT_ID", "client-1")
    settings = load_settings(config)
    assert settings.kafka == {
        "ssl.key.location": "/env/key.pem",
        "session.timeout.ms": "10000",
        "enable.ssl.certificate.verification": "false",
        "sasl.oauthbearer.client.id": "client-1",
    }
    conf = kafka_client_config(settings)
    assert conf["ssl.key.location"] == "/env/key.pem"
    assert conf["sasl.oauthbearer.client.id"] == "client-1"


def test_named_settings_win_over_the_passthrough_but_defaults_do_not(
    clean_env: pytest.MonkeyPatch,
) -> None:
    conf = kafka_client_config(
        Settings(
            kafka_bootstrap_servers="named:9092",
            kafka={"bootstrap.servers": "passed:9092", "security.protocol": "SSL"},
        )
    )
    assert conf["bootstrap.servers"] == "named:9092"
    assert conf["security.protocol"] == "SSL"  # KAFKA_SECURITY_PROTOCOL left at its default
    explicit = kafka_client_config(
        Settings(kafka_security_protocol="SASL_SSL", kafka={"security.protocol": "SSL"})
    )
    assert explicit["security.protocol"] == "SASL_SSL"


def test_consumer_guarantees_are_not_overridable_but_tuning_is(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from stream.intake.consume import consumer_config

    conf = consumer_config(Settings(kafka_group_id="g", kafka={"session.timeout.ms": "10000"}))
    assert conf["session.timeout.ms"] == "10000"
    assert conf["enable.auto.offset.store"] is False
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert conf["group.id"] == "g"


@pytest.mark.parametrize("prop", sorted(REFUSED_KAFKA_PROPERTIES))
def test_properties_our_guarantees_rest_on_are_refused_by_name(
    clean_env: pytest.MonkeyPatch, prop: str
) -> None:
    clean_env.setenv("KAFKA_CONFIG_" + prop.upper().replace(".", "_"), "x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("KAFKA_CONFIG_*") and prop in str(info.value)
    assert "\n" not in str(info.value)


def test_an_unknown_or_invalid_property_is_named_by_librdkafka(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match='No such configuration property: "sasl.mechanismz"'):
        check_kafka_properties(Settings(kafka={"sasl.mechanismz": "PLAIN"}))
    with pytest.raises(ConfigError, match="Invalid value"):
        check_kafka_properties(Settings(kafka={"acks": "banana"}))
    check_kafka_properties(Settings(kafka={"session.timeout.ms": "10000", "acks": "all"}))


def test_every_client_config_routes_librdkafka_logs_through_python_logging(
    clean_env: pytest.MonkeyPatch,
) -> None:
    conf = kafka_client_config(Settings())
    assert isinstance(conf["logger"], KafkaLogAdapter)
    assert conf["logger"].logger.name == "stream.kafka"


def test_masked_settings_show_no_secret(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(
        klaviyo_api_key=SecretStr("pk_" + PASSWORD * 2),
        kafka_sasl_password=SecretStr(PASSWORD),
        state_url=f"redis://:{PASSWORD}@127.0.0.1:6379/0",
        schema_registry_url=f"https://reg-user:{PASSWORD}@registry.example:8081",
        schema_registry_basic_auth_user_info=SecretStr(f"user:{PASSWORD}"),
        kafka={"sasl.oauthbearer.client.secret": PASSWORD, "ssl.key.password": PASSWORD},
    )
    shown = json.dumps(masked_settings(settings))
    assert PASSWORD not in shown
    assert PASSWORD not in repr(settings) and PASSWORD not in str(masked_settings(settings))
    masked = masked_settings(settings)
    assert masked["state_url"] == "redis://:***@127.0.0.1:6379/0"
    assert masked["schema_registry_url"] == "https://reg-user:***@registry.example:8081"
    # the clients still get the real values
    assert str(settings.state_url) == f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    assert kafka_client_config(settings)["sasl.password"] == PASSWORD


def test_state_url_mistakes_are_named_without_echoing_the_url() -> None:
    for url, says in [
        (f"redis://:{PASSWORD}@host:notaport/0", "port is not a number"),
        (f"redis://:{PASSWORD}@:6379/0", "no host"),
        (f"redis://:{PASSWORD}@host:6379/zero", "database is not a number"),
        ("sqlite://relative.db", "three slashes"),
        (f"postgres://u:{PASSWORD}@h/db", "unknown scheme"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_settings(state_url=url)
        assert str(info.value).startswith("STATE_URL: ") and says in str(info.value), url
        assert PASSWORD not in str(info.value)
    assert load_settings(state_url="rediss://:pw@redis.example:6380/2").state_url


@pytest.mark.parametrize("topics", ["", " , ,"])
def test_empty_topics_are_refused(topics: str) -> None:
    with pytest.raises(ConfigError, match="KAFKA_TOPICS: empty"):
        load_settings(kafka_topics=topics)


def test_revision_must_be_a_real_date() -> None:
    with pytest.raises(ConfigError, match="KLAVIYO_REVISION: 2024-13-99 is not a date"):
        load_settings(klaviyo_revision="2024-13-99")
    assert load_settings(klaviyo_revision="2025-10-15.pre").klaviyo_revision == "2025-10-15.pre"


def test_revision_retires_after_two_years_and_warns_within_ninety_days() -> None:
    assert revision_retirement("2026-07-15") == date(2028, 7, 15)
    assert revision_retirement("2024-02-29") == date(2026, 2, 28)
    assert revision_warning("2026-07-15", today=date(2028, 4, 15)) is None  # 91 days left
    soon = revision_warning("2026-07-15", today=date(2028, 4, 16))
    assert soon is not None and "90 days left" in soon
    gone = revision_warning("2026-07-15", today=date(2028, 7, 16))
    assert gone is not None and "retired on 2028-07-15" in gone


@pytest.mark.parametrize(
    ("url", "allow", "ok"),
    [
        ("http://sandbox:8080", False, False),
        ("http://10.0.0.5:8080", False, False),
        ("http://sandbox:8080", True, True),
        ("http://127.0.0.1:8080", False, True),
        ("http://localhost:8080", False, True),
        ("http://[::1]:8080", False, True),
        ("https://a.klaviyo.com", False, True),
        ("ftp://a.klaviyo.com", True, False),
    ],
)
def test_http_toward_klaviyo_only_to_loopback_or_on_purpose(
    url: str, allow: bool, ok: bool
) -> None:
    from stream.core.clients import require_klaviyo_credentials

    def check() -> None:
        settings = load_settings(
            klaviyo_base_url=url, klaviyo_allow_http=allow, klaviyo_api_key="pk_" + "k" * 30
        )
        require_klaviyo_credentials(settings)  # what every command that talks to Klaviyo does

    if ok:
        check()
        return
    with pytest.raises(ConfigError, match="^KLAVIYO_BASE_URL: "):
        check()


def test_rate_share_takes_a_fraction_of_the_replica_count() -> None:
    assert load_settings(klaviyo_rate_share="1/4").klaviyo_rate_share == 0.25
    assert load_settings(klaviyo_rate_share="0.5").klaviyo_rate_share == 0.5
    with pytest.raises(ConfigError, match="KLAVIYO_RATE_SHARE"):
        load_settings(klaviyo_rate_share="1/0")
    with pytest.raises(ConfigError, match="KLAVIYO_RATE_SHARE"):
        load_settings(klaviyo_rate_share="3/2")  # more than the whole quota


def test_settings_file_that_is_not_yaml_is_one_line(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka_topics: [analytics\nlog_level: INFO\n")
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    message = str(info.value)
    assert message.startswith("KLAVIYO_STREAM_CONFIG: ") and "not valid YAML" in message
    assert "line " in message and "\n" not in message
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(listing)


def test_registry_auth_and_tls_as_confluent_kafka_takes_them() -> None:
    basic = schema_registry_config(
        Settings(
            schema_registry_url="https://registry:8081",
            schema_registry_basic_auth_user_info=SecretStr("user:pw"),
            schema_registry_ssl_ca_location="/ca.pem",
        )
    )
    assert basic is not None and basic.pop("timeout") > 0  # a silent registry never hangs us
    assert basic.pop("max.retries") <= 1 and basic.pop("retries.max.wait.ms") <= 2000
    del basic["retries.wait.ms"]
    assert basic == {
        "url": "https://registry:8081",
        "basic.auth.user.info": "user:pw",
        "ssl.ca.location": "/ca.pem",
    }
    bearer = schema_registry_config(
        Settings(
            schema_registry_url="https://registry:8081",
            schema_registry_bearer_token=SecretStr("tok"),
            schema_registry_bearer_logical_cluster="lsrc-1",
        )
    )
    assert bearer is not None and bearer["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    with pytest.raises(ConfigError, match="SCHEMA_REGISTRY_BEARER_LOGICAL_CLUSTER"):
        load_settings(schema_registry_url="https://r", schema_registry_bearer_token="t")
    with pytest.raises(ConfigError, match="user:password"):
        load_settings(schema_registry_url="https://r", schema_registry_basic_auth_user_info="u")
    assert schema_registry_config(Settings()) is None


def test_known_environment_variables() -> None:
    assert known_environment_variable("KAFKA_TOPICS")
    assert known_environment_variable("KAFKA_CONFIG_SSL_KEY_LOCATION")
    assert known_environment_variable("KLAVIYO_STREAM_CONFIG")
    assert not known_environment_variable("KAFKA_TOPIC")
    assert not known_environment_variable("KAFKA_CONFIG_")


def test_librdkafka_lines_become_json_with_facility_and_client(log_output: io.StringIO) -> None:
    adapter = KafkaLogAdapter(logging.getLogger("stream.kafka"))
    text = f"[thrd:x]: redis://:{PASSWORD}@h:1 Connect to ipv4#127.0.0.1:1 failed"
    adapter.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", text)
    [line] = [json.loads(ln) for ln in log_output.getvalue().splitlines()]
    assert line["level"] == "ERROR" and line["logger"] == "stream.kafka"
    assert line["facility"] == "FAIL" and line["client"] == "rdkafka#producer-1"
    assert "Connect to ipv4#127.0.0.1:1 failed" in line["msg"]
    assert PASSWORD not in log_output.getvalue()  # a URL's password is redacted too


def test_console_format_is_text_with_the_same_fields() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer, fmt="console")
    try:
        logging.getLogger("stream.x").warning("hello %s", "there", extra={"topic": "t"})
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
    line = buffer.getvalue().strip()
    assert not line.startswith("{")
    assert "WARNING" in line and "stream.x: hello there" in line and "topic=t" in line
