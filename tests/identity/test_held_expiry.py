"""Held anonymous calls that nobody names expire: counted, then dropped or sent per config."""

from __future__ import annotations

import time
from typing import Any

import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish
from stream.telemetry import metrics
from tests.support import running_service, sandbox_get, service_settings, wait_until

VISIT = {
    "type": "track",
    "messageId": "anon-visit-1",
    "timestamp": "2026-05-01T10:00:00Z",
    "anonymousId": "cookie-9",
    "event": "Viewed Product",
    "properties": {"sku": "A"},
}
SIGNAL = {
    "type": "track",
    "messageId": "known-1",
    "timestamp": "2026-05-01T10:00:01Z",
    "userId": "u-9",
    "event": "Viewed Product",
    "properties": {},
}


def released(outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "klaviyo_stream_records_released_total", {"outcome": outcome}
        )
        or 0.0
    )


@pytest.mark.parametrize("policy", ["drop", "send"])
async def test_expired_anonymous_calls_follow_the_policy(
    policy: str, kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = topic_factory(partitions=1)
    publish({"bootstrap.servers": kafka_bootstrap}, topic, [VISIT, SIGNAL], Encoder())
    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(
            kafka_bootstrap, topic, sandbox.url, expired_anonymous=policy, hold_anonymous_seconds=60
        )

        async def events() -> list[dict[str, Any]]:
            return (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]

        before = released("expired_dropped" if policy == "drop" else "expired_sent")
        async with running_service(settings) as service:
            # the named call after it proves the anonymous one was consumed (and held)
            await wait_until(lambda: _has(events, "known-1"), what="the named call")
            assert not await _has(events, "anon-visit-1")
            assert service.sweep_once(time.time()) == 0  # not expired yet
            assert service.sweep_once(time.time() + 61) == 1
            if policy == "send":
                await wait_until(lambda: _has(events, "anon-visit-1"), what="the expired call")
        after = released("expired_dropped" if policy == "drop" else "expired_sent")
        stored = await events()
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]

    assert after - before == 1
    anonymous = [p for p in profiles if p["attributes"]["anonymous_id"] == "cookie-9"]
    if policy == "drop":
        assert [e["unique_id"] for e in stored] == ["known-1"] and not anonymous
    else:
        assert {e["unique_id"] for e in stored} == {"known-1", "anon-visit-1"}
        assert len(anonymous) == 1


async def _has(events: Any, unique_id: str) -> bool:
    return any(e["unique_id"] == unique_id for e in await events())
