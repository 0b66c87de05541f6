"""`klaviyo-stream test-event`: dry run shows the request; live mode shows Klaviyo's answer."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stream.cli import main
from stream.core.settings import SANDBOX_API_KEY
from stream.local.sandbox import SandboxConfig, SandboxThread
from tests.support.destination import inspect, write_yaml

ORDER = {
    "type": "track",
    "messageId": "tester-1",
    "timestamp": "2025-03-01T10:00:00Z",
    "userId": "u-1",
    "event": "Order Completed",
    "properties": {"total": 12.5, "order_id": "o-1"},
    "context": {"traits": {"email": "Ann@Example.com"}},
}


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings from the environment, with event definitions and a transformation."""
    for name in ("KLAVIYO_STREAM_CONFIG", "KLAVIYO_MODE", "KLAVIYO_PUBLIC_KEY"):
        monkeypatch.delenv(name, raising=False)
    defs = write_yaml(tmp_path, "defs.yaml", {"events": [
        {"type": "track", "event": "Order Completed", "metric": "Placed Order"},
        {"type": "identify"},
    ]})  # fmt: skip
    rules = write_yaml(tmp_path, "t.yaml", {"transformations": [
        {"rules": [{"rename": {"from": "properties.total", "to": "properties.revenue"}}]},
    ]})  # fmt: skip
    monkeypatch.setenv("EVENT_DEFINITIONS_FILE", defs)
    monkeypatch.setenv("TRANSFORMATIONS_FILE", rules)
    monkeypatch.setenv("KLAVIYO_API_KEY", SANDBOX_API_KEY)
    path = tmp_path / "call.json"
    path.write_text(json.dumps(ORDER))
    return path


def body_of(output: str) -> dict[str, Any]:
    """The first pretty-printed JSON request body in the tester's output."""
    start = output.index("\n{")
    decoder = json.JSONDecoder()
    document, _ = decoder.raw_decode(output[start + 1 :])
    assert isinstance(document, dict)
    return document


def test_dry_run_shows_the_routed_transformed_mapped_request_and_sends_nothing(
    configured: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SandboxThread(SandboxConfig()) as sandbox:
        monkeypatch.setenv("KLAVIYO_BASE_URL", sandbox.url)
        assert main(["test-event", str(configured), "--dry-run"]) == 0
        assert inspect(sandbox.url, "/sandbox/stats")["requests_total"] == 0
    out = capsys.readouterr().out
    assert f"POST {sandbox.url}/api/events" in out
    assert SANDBOX_API_KEY not in out and "Klaviyo-API-Key **********" in out
    attributes = body_of(out)["data"]["attributes"]
    assert attributes["metric"]["data"]["attributes"]["name"] == "Placed Order"
    # the original properties, and Klaviyo's name for the order id (ECOMMERCE_METRICS)
    assert attributes["properties"] == {"revenue": 12.5, "order_id": "o-1", "OrderId": "o-1"}
    assert attributes["value"] == 12.5
    assert attributes["profile"]["data"]["attributes"] == {
        "email": "ann@example.com",
        "external_id": "u-1",
    }


def test_live_mode_sends_and_prints_klaviyos_status(
    configured: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SandboxThread(SandboxConfig()) as sandbox:
        monkeypatch.setenv("KLAVIYO_BASE_URL", sandbox.url)
        assert main(["test-event", str(configured)]) == 0
        events = inspect(sandbox.url, "/sandbox/events")["events"]
    out = capsys.readouterr().out
    assert "Klaviyo answered 202" in out
    assert [e["metric"] for e in events] == ["Placed Order"]
    assert events[0]["unique_id"] == "tester-1"


def test_live_mode_in_client_mode_uses_the_public_key_endpoints(
    configured: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SandboxThread(SandboxConfig()) as sandbox:
        monkeypatch.setenv("KLAVIYO_BASE_URL", sandbox.url)
        monkeypatch.setenv("KLAVIYO_MODE", "client")
        monkeypatch.setenv("KLAVIYO_PUBLIC_KEY", "SBXPUB")
        assert main(["test-event", str(configured)]) == 0
        [request] = inspect(sandbox.url, "/sandbox/requests")["requests"]
    out = capsys.readouterr().out
    assert f"POST {sandbox.url}/client/events?company_id=SBXPUB" in out
    assert "Authorization" not in out
    assert request["path"] == "/client/events" and request["status"] == 202
    assert request["query"] == {"company_id": "SBXPUB"}


def test_a_filtered_call_and_a_refused_call_are_explained(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.write_text(json.dumps({**ORDER, "event": "Signed Up"}))
    assert main(["test-event", str(configured), "--dry-run"]) == 0
    assert "filtered by routing (not_defined)" in capsys.readouterr().out
    configured.write_text(json.dumps({**ORDER, "timestamp": "1980-01-01T00:00:00Z"}))
    assert main(["test-event", str(configured), "--dry-run"]) == 1
    assert "refused (map)" in capsys.readouterr().out


def test_a_call_without_message_id_or_timestamp_is_filled_and_the_tester_says_so(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = {k: v for k, v in ORDER.items() if k not in ("messageId", "timestamp")}
    configured.write_text(json.dumps(bare))
    assert main(["test-event", str(configured), "--dry-run"]) == 0
    out = capsys.readouterr().out
    filled = re.search(r"filled messageId (\S+), timestamp (\S+) \(as the analytics", out)
    assert filled is not None, out
    message_id, timestamp = filled.groups()
    assert uuid.UUID(message_id).version == 4
    moment = datetime.fromisoformat(timestamp)
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5)
    attributes = body_of(out)["data"]["attributes"]
    assert attributes["unique_id"] == message_id
    assert attributes["time"] == moment.replace(microsecond=0).isoformat()


def test_a_complete_call_is_not_said_to_be_filled(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test-event", str(configured), "--dry-run"]) == 0
    assert "filled" not in capsys.readouterr().out
