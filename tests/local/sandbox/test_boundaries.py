"""The client's mapping and the sandbox agree on Klaviyo's event limits at their exact edges.

Whatever the client lets through, the sandbox accepts; whatever the client refuses (a dead
letter), the sandbox would have refused too. The edges come from the spec's own words: a metric
name "Must be less than 128 characters", and "The time must be after the year 1990".
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from stream.core.calls import normalize
from stream.core.errors import MappingError
from stream.klaviyo import mapping
from stream.local.sandbox import SandboxServer
from tests.support.sandbox import post, profile

TIMES = [
    "1990-01-01T00:00:00Z",
    "1990-12-31T23:59:59Z",
    "1990-12-31T23:59:59.999999Z",
    "1991-01-01T00:00:00Z",
    "1991-01-01T00:00:00.000001Z",
    "1991-01-01T00:00:01Z",
    "1991-01-01T00:59:59+01:00",
    "1991-01-01T01:00:00+01:00",
]
NAMES = ["n" * 126, "n" * 127, "n" * 128, "n" * 129, "ü" * 127, "ü" * 128]


def _mapped(timestamp: str, name: str) -> dict[str, Any] | None:
    """The client's event attributes, or None when the client refuses the call."""
    call = normalize(
        "track", {"messageId": "m", "timestamp": timestamp, "userId": "u", "event": name}
    )
    try:
        return mapping.event_attributes(call)
    except MappingError:
        return None


def _raw(timestamp: str, name: str) -> dict[str, Any]:
    """The same event as a careless client would send it, unchecked."""
    return {
        "properties": {},
        "time": timestamp,
        "unique_id": "m",
        "metric": {"data": {"type": "metric", "attributes": {"name": name}}},
    }


@pytest.mark.parametrize(
    ("timestamp", "name"),
    [(t, "Placed Order") for t in TIMES] + [("2026-01-01T00:00:00Z", n) for n in NAMES],
)
async def test_case5_client_and_sandbox_draw_the_same_line(
    sandbox: SandboxServer, http: aiohttp.ClientSession, timestamp: str, name: str
) -> None:
    mapped = _mapped(timestamp, name)
    attributes = mapped if mapped is not None else _raw(timestamp, name)
    attributes["profile"] = {"data": profile(email="ada@example.com")}
    body = {"data": {"type": "event", "attributes": attributes}}
    status, answer, _ = await post(http, f"{sandbox.url}/api/events", body)
    assert status == (202 if mapped is not None else 400), (timestamp, len(name), answer)


def test_case5_the_edges_are_where_the_spec_puts_them() -> None:
    """Guards the table above: it must contain both outcomes on each side of each edge."""
    assert _mapped("1990-12-31T23:59:59Z", "E") is None
    assert _mapped("1991-01-01T00:00:00Z", "E") is not None
    assert _mapped("2026-01-01T00:00:00Z", "n" * 127) is not None
    assert _mapped("2026-01-01T00:00:00Z", "n" * 128) is None
