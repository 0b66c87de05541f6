"""Operator commands with an accounts file, without a broker: `test-event --account` says which
account a call goes to and why, and tests it with that account's settings; dead letters are
chosen and listed by account, and replayed to their account only; `run` checks the file at
start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stream.accounts.routing import REPLAY_HEADER
from stream.cli import main
from stream.klaviyo.mapping import BACKFILL_HEADER
from stream.local.sandbox import SandboxAccount, SandboxConfig, SandboxThread
from stream.ops.dlq import Group, format_list
from stream.ops.replay import ReplayFilter, replayed_headers
from tests.support.cli import clean_env, cli
from tests.support.destination import inspect, write_yaml

KEYS = {"KEY_A": "pk_key_a_" + "1" * 20, "KEY_B": "pk_key_b_" + "2" * 20}
ORDER = {
    "type": "track",
    "messageId": "tester-accounts-1",
    "timestamp": "2026-03-01T10:00:00Z",
    "userId": "u-1",
    "event": "Placed Order",
    "properties": {"value": 12.5},
    "context": {"groupId": "acme", "traits": {"email": "ann@example.com"}},
}


@pytest.fixture
def accounts_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ACCOUNTS_FILE with brand-a (topic brand-a) and acme (context.groupId), and a call."""
    document = {
        "accounts": [
            {"name": "brand-a", "key": "env:KEY_A", "topics": ["brand-a"]},
            {"name": "acme", "key": "env:KEY_B", "field": "context.groupId", "equals": "acme",
             "revision": "2026-04-15"},
        ]
    }  # fmt: skip
    for name in ("KLAVIYO_STREAM_CONFIG", "KLAVIYO_API_KEY", "KLAVIYO_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCOUNTS_FILE", write_yaml(tmp_path, "accounts.yaml", document))
    monkeypatch.setenv("KAFKA_TOPICS", "analytics,brand-a")
    for name, key in KEYS.items():
        monkeypatch.setenv(name, key)
    path = tmp_path / "call.json"
    path.write_text(json.dumps(ORDER))
    return path


def test_test_event_routes_then_sends_with_the_accounts_own_key_and_revision(
    accounts_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SandboxConfig(api_keys=(KEYS["KEY_A"],),
                           accounts=(SandboxAccount("acme", (KEYS["KEY_B"],)),))  # fmt: skip
    with SandboxThread(config) as sandbox:
        monkeypatch.setenv("KLAVIYO_BASE_URL", sandbox.url)
        assert main(["test-event", str(accounts_env)]) == 0
        out = capsys.readouterr().out
        assert "routing (topic analytics): acme (context.groupId = acme)" in out
        assert "testing with acme" in out and "revision: 2026-04-15" in out
        acme = inspect(sandbox.url, "/sandbox/events?account=acme")["events"]
        assert [e["metric"] for e in acme] == ["Placed Order"]
        assert inspect(sandbox.url, "/sandbox/events")["events"] == []  # not brand-a's

        assert main(["test-event", str(accounts_env), "--topic", "brand-a", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "routing (topic brand-a): brand-a (topic brand-a)" in out
        assert "testing with brand-a" in out and "revision: 2026-07-15" in out
    assert all(key not in out for key in KEYS.values())


def test_test_event_says_when_no_account_takes_the_call_and_tests_the_one_asked(
    accounts_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = {**ORDER, "context": {"groupId": "initech"}}
    accounts_env.write_text(json.dumps(other))
    assert main(["test-event", str(accounts_env), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "routing (topic analytics): no account matched: filtered (no_account)" in out
    assert "POST" not in out  # nothing planned
    assert main(["test-event", str(accounts_env), "--dry-run", "--account", "brand-a"]) == 0
    out = capsys.readouterr().out
    assert "routing would not send it to brand-a; testing with brand-a as asked" in out
    assert "POST https://a.klaviyo.com/api/events" in out
    assert main(["test-event", str(accounts_env), "--account", "nobody"]) == 2
    assert "no account named 'nobody' (accounts: brand-a, acme)" in capsys.readouterr().err


def test_dead_letters_are_chosen_listed_and_replayed_by_account() -> None:
    assert ReplayFilter(account="acme").matches({"account": "acme", "stage": "deliver"})
    assert not ReplayFilter(account="acme").matches({"account": "brand-a"})
    assert not ReplayFilter(account="acme").matches({"stage": "deliver"})  # one account only
    assert ReplayFilter().matches({"account": "brand-a"})

    original: list[tuple[str, str | bytes | None]] = [
        ("klaviyo-account", b"acme"), (REPLAY_HEADER, b"stale"), ("trace", b"t-1")
    ]  # fmt: skip
    headers = replayed_headers(original, {"account": "acme"})
    assert headers == [
        ("klaviyo-account", b"acme"), ("trace", b"t-1"), (BACKFILL_HEADER, b"1"),
        (REPLAY_HEADER, b"acme"),
    ]  # fmt: skip
    assert REPLAY_HEADER not in dict(replayed_headers(original, {}))  # no account: routed

    table = format_list("dlq", 3, [Group("deliver", "InvalidRequest", "acme", 2),
                                    Group("decode", "DecodeError", "", 1)])  # fmt: skip
    assert table.splitlines()[1].split() == ["account", "stage", "reason", "count", "newest",
                                             "oldest"]  # fmt: skip
    assert table.splitlines()[2].split()[:4] == ["acme", "deliver", "InvalidRequest", "2"]
    assert table.splitlines()[3].split()[:2] == ["-", "decode"]  # no account: not routed
    single = format_list("dlq", 1, [Group("decode", "DecodeError", "", 1)])
    assert single.splitlines()[1].split()[0] == "stage"  # without accounts: as before


def test_run_checks_the_accounts_file_at_start(tmp_path: Path) -> None:
    env: dict[str, Any] = {"kafka_bootstrap_servers": "127.0.0.1:9", "kafka_topics": "brand-a",
                           "klaviyo_api_key": "pk_" + "0" * 30, "metrics_port": 0}  # fmt: skip
    inline = {"name": "brand-a", "key": "pk_live_inline_secret_1234", "topics": ["brand-a"]}
    broken = write_yaml(tmp_path, "broken.yaml", {"accounts": [inline]})
    ran = cli(clean_env(accounts_file=broken, **env), "run")
    assert ran.code == 2 and "pk_live_inline_secret" not in ran.output
    assert f"configuration error: ACCOUNTS_FILE: {broken}: accounts[0] (brand-a): field 'key'" in (
        ran.stderr
    )
    valid = write_yaml(tmp_path, "valid.yaml", {"accounts": [
        {"name": "brand-a", "key": "env:KEY_A", "topics": ["brand-a"]}]})  # fmt: skip
    missing = cli(clean_env(accounts_file=valid, **env), "run")
    assert missing.code == 2 and "environment variable KEY_A is not set" in missing.stderr
