"""Retries and partial failures against the sandbox, through the real client and deliverer.

Retriable failures are retried a bounded number of times, then dead-lettered with the attempt
count and the first attempt's time; a 4xx that retrying cannot fix is dead-lettered after one
attempt; one bad entry of a bulk request is dead-lettered by its JSON pointer, the rest resent.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import SecretStr

from stream.core.calls import Call, Record
from stream.core.errors import InvalidRequest, KlaviyoError
from stream.core.retry import RetryPolicy
from stream.core.settings import SANDBOX_API_KEY
from stream.delivery.batch import Batch, Item
from stream.delivery.deliver import Deliverer
from stream.klaviyo import mapping
from stream.klaviyo.client import KlaviyoClient
from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support import sandbox_get
from tests.support.harness import stats

QUICK = RetryPolicy(base_seconds=0.01, factor=1.5, max_total_seconds=60, max_attempts=4)


def _item(n: int, **event_override: Any) -> Item:
    call = Call("track", f"retry-{n}", "2026-01-01T00:00:00+00:00", user_id=f"u{n}", event="E")
    event = {**mapping.event_attributes(call), **event_override}
    return Item("events", {"external_id": f"u{n}"}, event, [Record("t", 0, n)])


async def _deliver(url: str, batch: Batch) -> tuple[list[Record], list[tuple[Any, ...]]]:
    """(every record the settlement accounts for, (records, error, stage, attempts, first)
    per failure)."""
    async with KlaviyoClient(url, SecretStr(SANDBOX_API_KEY), "2026-07-15") as client:
        settlement = await Deliverer(client, retry=QUICK).send(batch)
    done = [r for i in settlement.delivered for r in i.records]
    letters: list[tuple[Any, ...]] = []
    for f in settlement.failed:
        records = [r for i in f.items for r in i.records]
        done += records
        assert isinstance(f.error, KlaviyoError)
        letters.append((records, f.error, f.stage, f.error.attempts, f.error.first_attempt))
    return done, letters


async def test_an_outage_is_retried_then_dead_lettered_with_its_attempts() -> None:
    before = time.time()
    config = SandboxConfig(rate_limits=False, fault_rate=1.0, fault_seed=1)
    async with SandboxServer(config) as sandbox:
        done, letters = await _deliver(sandbox.url, Batch("events", [_item(1)]))
        tried = (await stats(sandbox.url))["requests_total"]
    assert [s.offset for s in done] == [1], "reported done: its offset may move"
    [(sources, error, stage, attempts, first)] = letters
    assert isinstance(error, KlaviyoError) and error.retriable
    assert attempts == QUICK.max_attempts == tried
    assert before <= first <= time.time()
    assert stage == "deliver" and [s.offset for s in sources] == [1]


async def test_a_refused_request_is_not_retried() -> None:
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        batch = Batch("events", [_item(2, time="not a time")])
        done, letters = await _deliver(sandbox.url, batch)
        tried = (await stats(sandbox.url))["requests_total"]
    [(_sources, error, _stage, attempts, _first)] = letters
    assert isinstance(error, InvalidRequest)
    assert attempts == 1 == tried
    assert [s.offset for s in done] == [2]


async def test_one_bad_entry_of_a_bulk_request_is_dead_lettered_and_the_rest_delivered() -> None:
    items = [_item(n) for n in range(10, 16)]
    items[3] = _item(13, time="not a time")
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        done, letters = await _deliver(sandbox.url, Batch("events", items))
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        requests = (await stats(sandbox.url))["requests"]
    [(sources, error, _stage, attempts, _first)] = letters
    assert isinstance(error, InvalidRequest) and error.pointers
    assert [s.offset for s in sources] == [13]
    assert sorted(s.offset for s in done) == list(range(10, 16))
    assert sorted(e["unique_id"] for e in events) == [f"retry-{n}" for n in (10, 11, 12, 14, 15)]
    assert requests["POST /api/event-bulk-create-jobs"] == {"400": 1, "202": 1}, requests
