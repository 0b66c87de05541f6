"""A restart keeps the dedup window and the identity graph, with either state backend."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish
from tests.support import running_service, sandbox_get, service_settings, wait_until

SIGNUP = {
    "type": "identify",
    "messageId": "sign-1",
    "timestamp": "2026-05-01T10:00:00Z",
    "userId": "u-1",
    "traits": {"email": "Ann@Example.com", "firstName": "Ann"},
}
ORDER = {
    "type": "track",
    "messageId": "order-1",
    "timestamp": "2026-05-01T10:01:00Z",
    "userId": "u-1",
    "event": "Ordered Product",
    "properties": {"revenue": 5},
}
LATER = {
    "type": "track",
    "messageId": "view-2",
    "timestamp": "2026-05-01T11:00:00Z",
    "userId": "u-1",
    "event": "Viewed Product",
    "properties": {},
}


def event_requests(requests: list[dict[str, Any]], unique_id: str) -> list[dict[str, Any]]:
    """Every event entry with this unique_id in the requests the sandbox received."""
    found = []
    for request in requests:
        body = request.get("body") or {}
        data = body.get("data") or {}
        attributes = data.get("attributes") or {}
        if attributes.get("unique_id") == unique_id:
            found.append(attributes["profile"]["data"]["attributes"])
        for group in (attributes.get("events-bulk-create") or {}).get("data", []):
            for event in group["attributes"]["events"]["data"]:
                if event["attributes"].get("unique_id") == unique_id:
                    found.append(group["attributes"]["profile"]["data"]["attributes"])
    return found


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_restart_keeps_dedup_window_and_identity_graph(
    backend: str, kafka_bootstrap: str, topic_factory: Any, clean_redis_url: str
) -> None:
    state_url = (
        clean_redis_url
        if backend == "redis"
        else f"sqlite:///{tempfile.mkdtemp(prefix='restart-')}/state.db"
    )
    topic = topic_factory(partitions=3)
    producer = {"bootstrap.servers": kafka_bootstrap}
    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url, state_url=state_url)

        async def arrived(unique_id: str) -> bool:
            events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
            return any(e["unique_id"] == unique_id for e in events)

        publish(producer, topic, [SIGNUP, ORDER], Encoder())
        async with running_service(settings):
            await wait_until(lambda: arrived("order-1"), what="the first order")

        # the same order again (a producer retry), and a later event naming only the userId
        publish(producer, topic, [ORDER, LATER], Encoder())
        async with running_service(settings) as restarted:
            await wait_until(lambda: arrived("view-2"), what="the later event")
        requests = (await sandbox_get(sandbox.url, "/sandbox/requests"))["requests"]
        stats = await sandbox_get(sandbox.url, "/sandbox/stats")

    assert restarted.result.consumed == 2
    assert len(event_requests(requests, "order-1")) == 1  # our dedup dropped the replay
    assert stats["refused_duplicates"] == 0  # ... before Klaviyo had to refuse it
    [later] = event_requests(requests, "view-2")
    assert later["email"] == "ann@example.com"  # the graph still links u-1 to the email
