"""`test-event` with a catalog record: the bulk job it makes (dry run), and live: the job
followed to the end, a create refused because the item exists sent again as an update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.cli import main
from stream.core.settings import SANDBOX_API_KEY
from stream.local.sandbox import SandboxConfig, SandboxThread

ITEM = {"type": "catalog_item", "id": "MUG", "title": "Mug", "url": "https://s.io/mug",
        "price": 9.5, "categories": ["KITCHEN"]}  # fmt: skip


@pytest.fixture
def item_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KLAVIYO_STREAM_CONFIG", "KLAVIYO_MODE", "EVENT_DEFINITIONS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVIYO_API_KEY", SANDBOX_API_KEY)
    path = tmp_path / "item.json"
    path.write_text(json.dumps({**ITEM, "categories": []}))
    return path


def test_a_dry_run_shows_the_job_a_catalog_record_makes(
    item_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    item_file.write_text(json.dumps(ITEM))
    assert main(["test-event", str(item_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "catalog_item MUG → 1 bulk job request (create; an update when" in out
    assert "POST https://a.klaviyo.com/api/catalog-item-bulk-create-jobs" in out
    body = json.loads(out[out.index("{"):])
    [entry] = body["data"]["attributes"]["items"]["data"]
    assert entry["attributes"]["external_id"] == "MUG"
    assert entry["relationships"]["categories"]["data"][0]["id"] == "$custom:::$default:::KITCHEN"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**ITEM, "price": "cheap"}))
    assert main(["test-event", str(bad), "--dry-run"]) == 1
    assert "refused (map): catalog item MUG: price must be a number" in capsys.readouterr().out


def test_live_the_job_is_followed_and_a_refused_create_becomes_an_update(
    item_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SandboxThread(SandboxConfig(catalog_job_seconds=0.05)) as sandbox:
        monkeypatch.setenv("KLAVIYO_BASE_URL", sandbox.url)
        assert main(["test-event", str(item_file)]) == 0
        first = capsys.readouterr().out
        assert main(["test-event", str(item_file)]) == 0
        second = capsys.readouterr().out
    assert "complete: created" in first
    assert "already exists" in second and "as an update" in second
    assert "complete: updated" in second
