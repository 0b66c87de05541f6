"""Pieces of the lifecycle tests (deletion and consent through the broker): publishing calls to
chosen partitions with chosen record times (a producer's clock behind, a transaction), and
reading what the sandbox and the metrics say."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
from confluent_kafka import Producer

from stream.ops.produce import Encoder, key_of
from stream.telemetry import metrics
from tests.support import sandbox_get

ENCODER = Encoder()
DELETION = "/api/data-privacy-deletion-jobs"

# (partition, call, record timestamp in ms or None for the producer's now)
Placed = tuple[int, dict[str, Any], int | None]


def publish_to(
    bootstrap: str, topic: str, placed: Sequence[Placed], *, transactional: bool = False
) -> None:
    """Publish calls to chosen partitions (in order), as one transaction when asked (its
    commit marker is then the partition's last offset)."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "enable.idempotence": True}
    if transactional:
        config["transactional.id"] = f"tx-{uuid.uuid4().hex}"
    producer = Producer(config)
    if transactional:
        producer.init_transactions(30)
        producer.begin_transaction()
    for partition, call, timestamp in placed:
        extra = {} if timestamp is None else {"timestamp": timestamp}
        producer.produce(topic, ENCODER.encode(call), key_of(call), partition=partition, **extra)
    if transactional:
        producer.commit_transaction(30)
    assert producer.flush(30) == 0


def sample(name: str, **labels: str) -> float:
    """One sample of this process's registry (0 when absent)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def faults(url: str, **body: Any) -> dict[str, Any]:
    """POST /sandbox/faults (hold, fail, fault_rate); without a body, GET: what is held."""
    if not body:
        answer: dict[str, Any] = await sandbox_get(url, "/sandbox/faults")
        return answer
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/sandbox/faults", json=body) as resp,
    ):
        resp.raise_for_status()
        answer = await resp.json()
        return answer


async def requests(url: str) -> list[dict[str, Any]]:
    """Every API request the sandbox logged, in arrival order."""
    return list((await sandbox_get(url, "/sandbox/requests"))["requests"])


async def live_profiles(url: str, **identifier: str) -> list[dict[str, Any]]:
    """The sandbox's live profiles holding `identifier` (email=…), or all of them."""
    found = (await sandbox_get(url, "/sandbox/profiles"))["profiles"]
    if not identifier:
        return list(found)
    [(name, value)] = identifier.items()
    return [p for p in found if p["attributes"].get(name) == value]


async def deleted(url: str) -> list[dict[str, Any]]:
    """The profiles Klaviyo's data-privacy deletions removed."""
    return list((await sandbox_get(url, "/sandbox/deleted"))["deleted"])
