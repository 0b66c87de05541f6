"""Strings over 100 KB are found however escaped; the cheap raw check never hides one."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
import pytest

from stream.local.sandbox import SandboxServer
from stream.local.sandbox.validation import long_strings, strings_fit
from tests.support.sandbox import bulk_entry, bulk_event, bulk_events, inspect, post, profile

BULK = "/data/attributes/events-bulk-create/data"
TRICKY = ['"', "\\", "\n", "é", "€", "😀", "a", '\\"', '"\\']


@pytest.mark.parametrize("piece", TRICKY)
@pytest.mark.parametrize("chars", [25_600, 25_601, 34_134, 51_201, 102_400, 102_401])
@pytest.mark.parametrize("ascii_only", [False, True])
def test_strings_fit_never_hides_a_long_string(piece: str, chars: int, ascii_only: bool) -> None:
    text = (piece * (chars // len(piece) + 1))[:chars]
    body: Any = {"a": [{"b": "x" * 20_000}, {"c": text}], "d": "y" * 30_000}
    for raw in (orjson.dumps(body), json.dumps(body, ensure_ascii=ascii_only).encode()):
        found = list(long_strings(orjson.loads(raw)))
        assert found == ([("a", 1, "c")] if len(text.encode()) > 100 * 1024 else [])
        if strings_fit(raw):
            assert found == []


def test_strings_fit_passes_ordinary_bodies() -> None:
    entry = bulk_entry(profile(email="a@example.com"), bulk_event(properties={"sku": "S-1"}))
    assert strings_fit(orjson.dumps(bulk_events(*[entry] * 1_000)))


async def test_long_string_of_escapes_in_a_bulk_entry_is_400(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    long = bulk_event(properties={"quotes": '"' * (100 * 1024 + 1)})
    fine = bulk_event(properties={"quotes": '"' * 60_000}, unique_id="2")
    body = bulk_events(
        bulk_entry(profile(email="a@example.com"), fine),
        bulk_entry(profile(email="b@example.com"), long),
    )
    status, answer, _ = await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", body)
    assert status == 400
    [error] = answer["errors"]
    assert (
        error["source"]["pointer"]
        == f"{BULK}/1/attributes/events/data/0/attributes/properties/quotes"
    )
    assert (await inspect(http, sandbox.url, "events"))["events"] == []
    body = bulk_events(bulk_entry(profile(email="a@example.com"), fine))
    assert (await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", body))[0] == 202
