"""Case 9 of the completion-ledger issue: the fault tests check what the promises say.

`assert_exactly_once` (every fault test ends with it) must fail when an event sits on the wrong
person's profile, when its content is not what the call said, and when Klaviyo had to refuse a
replay the service's own dedup should have dropped; it passes on what is right. Fed through the
real client into the sandbox, so the checks read exactly what the fault tests read.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from pydantic import SecretStr

from stream.core.calls import normalize
from stream.core.errors import KlaviyoClientError
from stream.core.settings import SANDBOX_API_KEY
from stream.klaviyo import mapping
from stream.klaviyo.client import EVENTS, PROFILE_IMPORT, KlaviyoClient
from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support.harness import assert_exactly_once

CALLS: list[dict[str, Any]] = [
    {"type": "identify", "messageId": "i-1", "timestamp": "2026-01-01T00:00:00+00:00",
     "userId": "ann", "traits": {"email": "ann@example.com"}},
    {"type": "identify", "messageId": "i-2", "timestamp": "2026-01-01T00:00:01+00:00",
     "userId": "bob", "traits": {"email": "bob@example.com"}},
    {"type": "track", "messageId": "t-1", "timestamp": "2026-01-01T00:00:02+00:00",
     "userId": "ann", "event": "Ordered Product",
     "properties": {"revenue": 9.5, "currency": "USD", "sku": "S1"}},
]  # fmt: skip


async def _deliver(url: str, event_on: str, properties: dict[str, Any], replay: bool) -> None:
    """What a service would send, with the event placed on `event_on`'s profile."""
    async with KlaviyoClient(url, SecretStr(SANDBOX_API_KEY), "2026-07-15") as client:
        for call in CALLS[:2]:
            profile = {"email": call["traits"]["email"], "external_id": call["userId"]}
            await client.post(PROFILE_IMPORT, mapping.profile_import_body(profile))
        track = normalize("track", {**CALLS[2], "properties": properties})
        event = mapping.event_attributes(track)
        body = mapping.single_event_body(event, {"email": f"{event_on}@example.com"})
        for _ in range(2 if replay else 1):
            with contextlib.suppress(KlaviyoClientError):  # the replay, refused by unique_id
                await client.post(EVENTS, body)


@pytest.mark.parametrize(
    ("event_on", "properties", "replay", "caught"),
    [
        ("ann", CALLS[2]["properties"], False, None),
        ("bob", CALLS[2]["properties"], False, "on the wrong profile"),
        ("ann", {**CALLS[2]["properties"], "sku": "S2"}, False, "properties"),
        ("ann", {**CALLS[2]["properties"], "revenue": 1.0}, False, "value"),
        ("ann", CALLS[2]["properties"], True, "refused 1 replays"),
    ],
)
async def test_case9_the_fault_checks_catch_a_wrong_profile_wrong_content_and_a_replay(
    event_on: str, properties: dict[str, Any], replay: bool, caught: str | None
) -> None:
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        await _deliver(sandbox.url, event_on, properties, replay)
        if caught is None:
            await assert_exactly_once(sandbox.url, CALLS)
            return
        with pytest.raises(AssertionError) as failed:
            await assert_exactly_once(sandbox.url, CALLS)
        assert caught in str(failed.value) or caught in repr(failed.value.args)
        if replay:  # the crash window docs/guarantees.md names may see replays: allowed there
            await assert_exactly_once(sandbox.url, CALLS, replays_allowed=True)
