"""The catalog stage with the real ledger, state store, client and sandbox (no broker): what
finishes a record, and when its offset may move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Message

from stream.catalog.decode import CatalogDecoder
from stream.catalog.stage import SETTLE_EVERY, CatalogStage
from stream.completion.dedup import Deduplicator
from stream.completion.ledger import Ledger
from stream.core.calls import Record
from stream.delivery.deliver import Deliverer
from stream.klaviyo.client import KlaviyoClient
from stream.klaviyo.governor import Governor
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce_catalog import CatalogEncoder
from stream.state import open_store
from tests.support import wait_until
from tests.support.catalog import by_id, catalog
from tests.support.deadletters import DeadLetterSink
from tests.support.sandbox import API_KEY, REVISION

TP = ("products", 0)


class Rig:
    """A stage over the sandbox, and the offsets its ledger stored."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store = open_store("sqlite:///:memory:")
        self.stored: dict[tuple[str, int], int] = {}
        self.letters = DeadLetterSink()
        self.ledger = Ledger(Deduplicator(self.store), self.letters, self.keep)
        self.client = KlaviyoClient(url, _secret(API_KEY), REVISION)
        requester = Deliverer(self.client, governor=Governor({})).request
        self.stage = CatalogStage(self.store, requester, self.ledger, CatalogDecoder(),
                                  linger_seconds=0.01, time_scale=0.05)  # fmt: skip

    def keep(self, topic: str, partition: int, offset: int) -> None:
        self.stored[(topic, partition)] = offset

    def read(self, *lines: dict[str, Any], start: int = 0) -> list[Record]:
        """Records of these catalog lines at offsets start, start + 1, … (a fetch)."""
        encoder = CatalogEncoder()
        messages = []
        for n, line in enumerate(lines):
            key, value = encoder.encode(line)
            messages.append(Message(topic=TP[0], partition=TP[1], offset=start + n, key=key,
                                    value=value))  # fmt: skip
        return self.ledger.begin(messages, self.ledger.stamp(messages))


def _secret(key: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(key)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with SandboxServer(SandboxConfig(catalog_job_seconds=0.02)) as sandbox:
        made = Rig(sandbox.url)
        async with made.client:
            made.stage.start()
            yield made
            await made.stage.close(5)
        made.store.close()


def mug(price: float) -> dict[str, Any]:
    return {"type": "catalog_item", "id": "MUG", "title": "Mug", "url": "https://s.io/m",
            "price": price}  # fmt: skip


async def test_a_version_read_again_after_a_rebalance_finishes_only_once_it_is_applied(
    rig: Rig,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{rig.url}/sandbox/faults",
            json={"hold": True, "operations": ["bulk_create_catalog_items"]},
        ):
            pass  # fmt: skip
        rig.ledger.assign([TP])
        await rig.stage.accept(rig.read(mug(1.0)))
        rig.ledger.revoke([TP])  # the partition moves away and comes back: read again
        rig.ledger.assign([TP])
        await rig.stage.accept(rig.read(mug(1.0)))
        # what finished reaches the ledger within SETTLE_EVERY: wait that long for what must
        # not happen (a condition that never comes cannot be awaited)
        await asyncio.sleep(SETTLE_EVERY * 2)
        assert rig.stored == {}, "nothing may be committed while the version is not applied"
        async with http.post(f"{rig.url}/sandbox/faults", json={"hold": False}):
            pass

        async def committed() -> bool:
            return rig.stored.get(TP) == 1

        await wait_until(committed, timeout=10, what="the record finished", poll=0.02)
        items = by_id((await catalog(http, rig.url))["items"])
    assert items["MUG"]["price"] == 1.0 and rig.letters.letters == []
    assert rig.stage.pending == 0 and rig.ledger.pending == 0


async def test_an_older_version_read_after_a_newer_was_accepted_changes_nothing(
    rig: Rig,
) -> None:
    rig.ledger.assign([TP])
    await rig.stage.accept(rig.read(mug(1.0), mug(2.0)))

    async def done() -> bool:
        return rig.stored.get(TP) == 2

    await wait_until(done, timeout=10, what="the newer version applied", poll=0.02)
    async with aiohttp.ClientSession() as http:
        before = len((await catalog(http, rig.url))["jobs"])
        await rig.stage.accept(rig.read(mug(1.0)))  # offset 0 again: a replay
        rig.stage.hurry()
        await rig.stage.close(1)  # hands what finished to the ledger
        items = by_id((await catalog(http, rig.url))["items"])
        after = len((await catalog(http, rig.url))["jobs"])
    assert items["MUG"]["price"] == 2.0 and after == before, "no job for the older version"
