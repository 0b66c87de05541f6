"""`klaviyo-stream test-event` shows (and sends) the consent, list and deletion requests a call
makes, each change on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stream.cli import main
from stream.core.settings import SANDBOX_API_KEY
from stream.local.sandbox import SandboxConfig, SandboxThread, SeedList
from tests.support.destination import inspect

SIGNUP = {
    "type": "identify",
    "messageId": "tester-consent-1",
    "timestamp": "2025-03-01T10:00:00Z",
    "userId": "u-1",
    "traits": {"email": "ann@example.com"},
    "integrations": {"Klaviyo": {
        "subscribe": {"email": True, "sms": True, "list_id": "NEWS01"},
        "lists": {"add": ["VIP001"]},
        "suppress": False,
    }},
}  # fmt: skip


@pytest.fixture
def call_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KLAVIYO_STREAM_CONFIG", "KLAVIYO_MODE", "KLAVIYO_PUBLIC_KEY",
                 "EVENT_DEFINITIONS_FILE", "TRANSFORMATIONS_FILE", "CONSENT_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVIYO_API_KEY", SANDBOX_API_KEY)
    path = tmp_path / "call.json"
    path.write_text(json.dumps(SIGNUP))
    return path


def bodies(output: str) -> dict[str, dict[str, Any]]:
    """Each printed request's `METHOD path` → its JSON body."""
    found: dict[str, dict[str, Any]] = {}
    decoder = json.JSONDecoder()
    position = 0
    for line in output.splitlines(keepends=True):
        words = line.split(" ")
        if len(words) == 2 and words[0] in ("POST", "DELETE") and words[1].startswith("http"):
            path = words[1].strip().split("/", 3)[3].split("?")[0]
            start = output.index("\n{", position) + 1
            found[f"{words[0]} {path}"], _ = decoder.raw_decode(output[start:])
        position += len(line)
    return found


def test_a_dry_run_shows_every_change_and_what_cannot_be_sent(
    call_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SandboxThread(SandboxConfig()) as sandbox:
        monkeypatch.setenv("KLAVIYO_BASE_URL", sandbox.url)
        assert main(["test-event", str(call_file), "--dry-run"]) == 0
        assert inspect(sandbox.url, "/sandbox/stats")["requests_total"] == 0
    out = capsys.readouterr().out
    shown = bodies(out)
    assert set(shown) == {
        "POST api/profile-import",
        "POST api/profile-subscription-bulk-create-jobs",
        "POST api/profile-suppression-bulk-delete-jobs",
        "POST api/lists/VIP001/relationships/profiles",
    }
    subscribe = shown["POST api/profile-subscription-bulk-create-jobs"]["data"]
    entry = subscribe["attributes"]["profiles"]["data"][0]["attributes"]
    assert entry["email"] == "ann@example.com" and set(entry["subscriptions"]) == {"email"}
    assert subscribe["relationships"]["list"]["data"]["id"] == "NEWS01"
    assert "historical_import" not in subscribe["attributes"]  # a live call
    listed = shown["POST api/lists/VIP001/relationships/profiles"]
    assert listed == {"data": [{"type": "profile", "id": "<profile id>"}]}
    assert "refused (map): subscribe sms: the person has no phone number (E.164) we know" in out
    assert "identify → 4 request(s)" in out


def test_live_mode_sends_each_change_with_the_profile_id_it_needs(
    call_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = (SeedList("NEWS01", "News"), SeedList("VIP001", "VIP"))
    with SandboxThread(SandboxConfig(lists=lists, deletion_delay_seconds=0)) as sandbox:
        monkeypatch.setenv("KLAVIYO_BASE_URL", sandbox.url)
        assert main(["test-event", str(call_file)]) == 0
        [profile] = inspect(sandbox.url, "/sandbox/profiles")["profiles"]
        out = capsys.readouterr().out
        assert f"POST /api/lists/VIP001/relationships/profiles with profile id {profile['id']}" in (
            out
        )
        assert sorted(profile["lists"]) == ["NEWS01", "VIP001"]
        assert profile["consent"]["email.marketing"]["state"] == "subscribed"
        # and a delete call naming the external_id: Klaviyo deletes by the id a lookup finds
        call_file.write_text(json.dumps({
            "type": "delete", "messageId": "tester-delete-1", "timestamp": "2025-03-02T10:00:00Z",
            "userId": "u-1",
        }))  # fmt: skip
        assert main(["test-event", str(call_file)]) == 0
        out = capsys.readouterr().out
        deleted = inspect(sandbox.url, "/sandbox/deleted")
    assert "delete → 1 request(s)" in out
    assert f"POST /api/data-privacy-deletion-jobs with profile id {profile['id']}" in out
    assert [d["id"] for d in deleted["deleted"]] == [profile["id"]]
    assert [t["kind"] for t in deleted["deletions"]] == ["id"]
