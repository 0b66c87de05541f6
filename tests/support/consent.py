"""Builders and sandbox readers shared by the consent, list and deletion tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from stream.klaviyo.mapping import BACKFILL_HEADER
from stream.ops.produce import Encoder, key_of
from tests.support import sandbox_get

ENCODER = Encoder()
NOW = datetime.now(UTC).replace(microsecond=0)
SUBSCRIBE = "/api/profile-subscription-bulk-create-jobs"
UNSUBSCRIBE = "/api/profile-subscription-bulk-delete-jobs"
SUPPRESS = "/api/profile-suppression-bulk-create-jobs"
UNSUPPRESS = "/api/profile-suppression-bulk-delete-jobs"
DELETION = "/api/data-privacy-deletion-jobs"


def at(seconds: float) -> str:
    """A call time: an hour ago plus `seconds` (past, so Klaviyo takes it as consent time)."""
    return (NOW - timedelta(hours=1) + timedelta(seconds=seconds)).isoformat()


def call(call_type: str, n: float, **fields: Any) -> dict[str, Any]:
    """A Segment call of `call_type` at `at(n)`, with a fresh messageId."""
    return {
        "type": call_type,
        "messageId": f"{call_type}-{n}-{uuid.uuid4().hex[:8]}",
        "timestamp": at(n),
        **fields,
    }


def klaviyo(**options: Any) -> dict[str, Any]:
    """`integrations` carrying per-call Klaviyo options."""
    return {"Klaviyo": options}


def publish(
    bootstrap: str, topic: str, calls: list[dict[str, Any]], *, backfill: bool = False
) -> None:
    """Publish `calls` in order to partition 0 (with the backfill header when asked)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    headers = [(BACKFILL_HEADER, b"1")] if backfill else None
    for c in calls:
        producer.produce(topic, ENCODER.encode(c), key_of(c), partition=0, headers=headers)
    assert producer.flush(30) == 0


async def requests_to(url: str, path: str, method: str = "POST") -> list[dict[str, Any]]:
    """The sandbox's log of API requests to `path` (a prefix) with `method`."""
    log = (await sandbox_get(url, "/sandbox/requests"))["requests"]
    return [r for r in log if r["path"].startswith(path) and r["method"] == method]


async def profiles(url: str) -> list[dict[str, Any]]:
    return list((await sandbox_get(url, "/sandbox/profiles"))["profiles"])


async def profile_with(url: str, **identifier: str) -> dict[str, Any] | None:
    """The one live profile holding `identifier` (email=…, external_id=…), or None."""
    [(name, value)] = identifier.items()
    found = [p for p in await profiles(url) if p["attributes"].get(name) == value]
    assert len(found) <= 1, found
    return found[0] if found else None


async def consent_jobs(url: str, kind: str | None = None) -> list[dict[str, Any]]:
    jobs = (await sandbox_get(url, "/sandbox/consent-jobs"))["jobs"]
    return [j for j in jobs if kind is None or j["kind"] == kind]


async def members(url: str, list_id: str) -> list[str]:
    lists = {m["id"]: m for m in (await sandbox_get(url, "/sandbox/lists"))["lists"]}
    return list(lists[list_id]["members"])


async def action_log(url: str) -> list[tuple[str, str]]:
    """(method, path) of every consent, suppression, list and deletion request, in order."""
    log = (await sandbox_get(url, "/sandbox/requests"))["requests"]
    kept = ("/api/profile-subscription", "/api/profile-suppression", "/api/lists/",
            "/api/data-privacy", "/client/subscriptions")  # fmt: skip
    return [(r["method"], r["path"].rstrip("/")) for r in log if r["path"].startswith(kept)]
