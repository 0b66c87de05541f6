"""Every setup mistake: exit 2, one line naming the setting and the fix, no traceback, no secret.

These run `python -m stream run` as a person would; none of them gets as far as a broker.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

import stream
from tests.support.cli import Ran, clean_env, cli

KEY = "pk_setup_" + "Q" * 30
PASSWORD = "St4te-Pa55word"
SASL = "Sasl-Pa55word"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    values = {
        "kafka_bootstrap_servers": "127.0.0.1:9",
        "klaviyo_api_key": KEY,
        "kafka_sasl_password": SASL,
        "metrics_port": "0",
        "state_url": f"redis://:{PASSWORD}@127.0.0.1:9/0",
    }
    values.update(extra)
    return clean_env(**values)


def assert_one_line(ran: Ran, setting: str) -> None:
    assert ran.code == 2, ran.output
    assert "Traceback" not in ran.output
    assert ran.stdout == ""
    assert len(ran.stderr_lines) == 1, ran.stderr
    line = ran.stderr_lines[0]
    assert line.startswith(f"klaviyo-stream: configuration error: {setting}"), line
    for secret in (KEY, PASSWORD, SASL):
        assert secret not in ran.output


@pytest.mark.parametrize(
    ("setting", "extra", "says"),
    [
        ("KAFKA_TOPICS", {"kafka_topics": ""}, "name at least one topic"),
        ("STATE_URL", {"state_url": f"redis://:{PASSWORD}@host:notaport/0"}, "port"),
        ("KLAVIYO_REVISION", {"klaviyo_revision": "2024-13-99"}, "is not a date"),
        ("KLAVIYO_BASE_URL", {"klaviyo_base_url": "http://klaviyo.example"}, "KLAVIYO_ALLOW_HTTP"),
        ("KAFKA_CONFIG_", {"kafka_config_enable_auto_commit": "false"}, "enable.auto.commit"),
        ("KAFKA_CONFIG_", {"kafka_config_no_such_thing": "1"}, "no.such.thing"),
        ("KAFKA_SECURITY_PROTOCOL", {"kafka_security_protocol": "TLS"}, "SASL_SSL"),
    ],
)
def test_setting_mistakes(setting: str, extra: dict[str, str], says: str) -> None:
    ran = cli(base_env(**extra), "run")
    assert_one_line(ran, setting)
    assert says in ran.stderr


def test_metrics_port_in_use(busy_port: int) -> None:
    ran = cli(base_env(metrics_port=str(busy_port), state_url="sqlite:///:memory:"), "run")
    assert_one_line(ran, "METRICS_PORT")
    assert str(busy_port) in ran.stderr and "choose a free port" in ran.stderr


def test_settings_file_that_is_not_yaml(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(f"klaviyo_api_key: {KEY}\nkafka_topics: [analytics\n")
    ran = cli(base_env(), "run", "--config", str(config))
    assert_one_line(ran, "KLAVIYO_STREAM_CONFIG")
    assert "not valid YAML" in ran.stderr and "line " in ran.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_accepted_before_or_after_the_subcommand(tmp_path: Path, where: str) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("kafka_topics: ''\n")  # a mistake only the file can make
    option = ["--config", str(config)]
    args = [*option, "run"] if where == "before" else ["run", *option]
    assert_one_line(cli(base_env(), *args), "KAFKA_TOPICS")


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    ran = cli(base_env(), "status", "--config", str(tmp_path / "nope.yaml"))
    assert_one_line(ran, "KLAVIYO_STREAM_CONFIG")


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_replay_time_filters_are_usage_errors(option: str) -> None:
    ran = cli(base_env(), "dlq", "replay", option, "yesterday-ish")
    assert ran.code == 2 and "Traceback" not in ran.output
    assert "usage:" in ran.stderr and "not a time" in ran.stderr
    assert "configuration error" not in ran.stderr


def test_dlq_show_position_is_a_usage_error() -> None:
    ran = cli(base_env(), "dlq", "show", "3-42")
    assert ran.code == 2 and "usage:" in ran.stderr and "PARTITION:OFFSET" in ran.stderr


def test_version_is_the_package_metadata_version() -> None:
    ran = cli(clean_env(), "--version")
    assert ran.code == 0
    assert ran.stdout.strip() == f"klaviyo-stream {version('klaviyo-stream')}"
    assert stream.__version__ == version("klaviyo-stream")


def test_doctor_with_bad_settings_fails_its_settings_check_without_a_secret() -> None:
    ran = cli(base_env(state_url=f"redis://:{PASSWORD}@host:notaport/0"), "doctor")
    assert ran.code == 1 and "Traceback" not in ran.output
    assert ran.stdout.startswith("✗ settings: STATE_URL: ")
    assert PASSWORD not in ran.output and KEY not in ran.output
