"""`doctor` with an accounts file: the file, then each account's key, rule files, revision,
state and Klaviyo (key accepted, scopes), named by account, against a sandbox serving the
accounts; no key is ever printed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.core.settings import Settings
from stream.local.sandbox import SandboxAccount, SandboxConfig, SandboxThread
from stream.ops.doctor import Check, run_checks
from tests.support.destination import write_yaml

KEYS = {name: f"pk_{name.lower()}_" + "7" * 20 for name in ("KEY_A", "KEY_B", "KEY_C")}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxThread]:
    config = SandboxConfig(
        api_keys=(KEYS["KEY_A"],),
        accounts=(
            SandboxAccount("brand-b", (KEYS["KEY_B"],), scopes=("events:write",)),
            SandboxAccount("brand-c", (KEYS["KEY_C"],)),
        ),
    )
    with SandboxThread(config) as server:
        yield server


def lines(checks: list[Check]) -> dict[str, str]:
    return {check.name: check.line() for check in checks}


def test_doctor_checks_every_accounts_key_scopes_and_revision(
    sandbox: SandboxThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, key in KEYS.items():
        monkeypatch.setenv(name, key)
    document = {
        "accounts": [
            {"name": "brand-a", "key": "env:KEY_A", "topics": ["analytics"]},
            {"name": "brand-b", "key": "env:KEY_B", "header": True},
            {"name": "brand-c", "key": "env:KEY_C", "header": True, "revision": "2023-01-24"},
            {"name": "brand-d", "key": "env:KEY_D", "header": True},
            {"name": "brand-e", "key": "env:KEY_A", "header": True},
        ]
    }
    settings = Settings(
        accounts_file=write_yaml(tmp_path, "accounts.yaml", document),
        klaviyo_base_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
    )
    found = lines(list(run_checks(settings, timeout=5)))
    assert found["accounts file"].startswith("✓ accounts file: ")
    assert "5 accounts (brand-a, brand-b, brand-c, brand-d, brand-e)" in found["accounts file"]
    assert found["kafka"].startswith("✗ kafka: KAFKA_BOOTSTRAP_SERVERS is not set")
    assert found["account brand-a: key"] == "✓ account brand-a: key: env:KEY_A, server mode"
    assert found["account brand-a: klaviyo"].startswith("✓ account brand-a: klaviyo: ")
    assert "API key accepted (revision 2026-07-15)" in found["account brand-a: klaviyo"]
    assert found["account brand-a: state store"].startswith(
        f"✓ account brand-a: state store: SQLite {''}"
    )
    assert f"{tmp_path}/state-brand-a.db will be created" in found["account brand-a: state store"]
    refused = found["account brand-b: klaviyo"]
    assert refused.startswith("✗ account brand-b: klaviyo: API key lacks profiles:read")
    assert "→ fix: give the key these scopes" in refused
    retired = found["account brand-c: klaviyo revision"]
    assert retired.startswith("✗ account brand-c: klaviyo revision: KLAVIYO_REVISION 2023-01-24")
    assert retired.endswith("→ fix: set its revision in ACCOUNTS_FILE to a current revision and "
                            "test it against the sandbox")  # fmt: skip
    missing = found["account brand-d: key"]
    assert missing.startswith("✗ account brand-d: key: environment variable KEY_D is not set")
    assert "account brand-d: klaviyo" not in found  # no key: nothing to ask Klaviyo
    assert "account brand-d: klaviyo credentials" not in found
    assert found["account brand-a: klaviyo credentials"].startswith("✓")
    assert found["account brand-e: key"].startswith(
        "✗ account brand-e: key: env:KEY_A is account brand-a's key too"
    )
    text = "\n".join(found.values())
    assert all(key not in text for key in KEYS.values())


def test_a_broken_accounts_file_is_one_failed_check(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "accounts.yaml", {"accounts": [{"name": "a", "key": "pk_x"}]})
    found = lines(list(run_checks(Settings(accounts_file=path), timeout=1)))
    assert found["accounts file"].startswith(f"✗ accounts file: ACCOUNTS_FILE: {path}: ")
    assert "field 'key': must name where the key is" in found["accounts file"]
    assert not any(name.startswith("account ") for name in found)
