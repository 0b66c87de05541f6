"""A batch's accounted size is exactly the length of the request body deliver sends."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from stream.core.calls import Record
from stream.core.errors import MappingError
from stream.core.settings import SANDBOX_API_KEY
from stream.delivery.batch import MAX_STRING_BYTES, Batch, Item, Lane
from stream.delivery.deliver import Deliverer
from stream.klaviyo import mapping
from stream.klaviyo.client import EVENTS_BULK, PROFILES_BULK, KlaviyoClient
from stream.klaviyo.governor import Governor
from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support import sandbox_get

WORDS = ["plain", 'quo"te', "back\\slash", "new\nline", "tab\t", "ünïcødé", "emoji 🛒", "\u0001"]


def random_event(rng: random.Random, n: int) -> Item:
    person = rng.randrange(40)
    profile: dict[str, Any] = {"email": f"p{person}@example.com", "external_id": f"u-{person}"}
    if person % 3 == 0:
        profile["first_name"] = rng.choice(WORDS)
    properties = {
        rng.choice(WORDS) + str(i): rng.choice(
            [
                rng.random() * 10 ** rng.randint(-5, 9),
                rng.randint(-(10**12), 10**12),
                True,
                None,
                rng.choice(WORDS) * rng.randint(0, 50),
                [1.5, {"nested": rng.choice(WORDS)}],
            ]
        )
        for i in range(rng.randint(0, 12))
    }
    event = {
        "properties": properties,
        "time": "2026-01-01T00:00:00+00:00",
        "unique_id": f"m-{n}",
        "metric": {"data": {"type": "metric", "attributes": {"name": rng.choice(WORDS[:6])}}},
    }
    if rng.random() < 0.3:
        event["value"] = round(rng.random() * 100, 2)
    return Item("events", profile, event, [Record("t", 0, n)])


def random_profile(rng: random.Random, n: int) -> Item:
    attributes = {
        "email": f"p{n}@example.com",
        "first_name": rng.choice(WORDS),
        "properties": {"plan": rng.choice(WORDS), "score": rng.random()},
    }
    return Item("profiles", attributes, None, [Record("t", 0, n)])


def body_of(batch: Batch) -> dict[str, Any]:
    """The bulk body deliver builds for a batch (groups in first-seen order)."""
    if batch.kind == "profiles":
        return mapping.bulk_profiles_body([i.profile for i in batch.items])
    return mapping.bulk_events_body(
        [(g[0].profile, [i.event for i in g if i.event is not None]) for g in batch.groups.values()]
    )


@pytest.mark.parametrize("seed", range(5))
def test_accounted_size_equals_the_encoded_body_byte_for_byte(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.randint(3_000, 60_000)
    lanes = {"events": Lane("events", 1000, limit), "profiles": Lane("profiles", 10_000, limit)}
    for n in range(3_000):
        item = random_event(rng, n) if rng.random() < 0.8 else random_profile(rng, n)
        lanes[item.kind].add(item)
    batches = [b for lane in lanes.values() for b in lane.drain()]
    assert len(batches) > 10
    for batch in batches:
        assert batch.size == len(orjson.dumps(body_of(batch)))


@given(st.integers(0, 2**32), st.lists(st.booleans(), min_size=1, max_size=40))
def test_a_batch_less_some_items_is_accounted_anew_and_keeps_its_slot(
    seed: int, dropped: list[bool]
) -> None:
    """As the service leaves out what the late check caught or a revoked partition took."""
    rng = random.Random(seed)
    kind = "events" if seed % 3 else "profiles"
    made = random_event if kind == "events" else random_profile
    batch = Batch(kind, [made(rng, n) for n in range(len(dropped))], reserved=EVENTS_BULK)
    gone = [item for item, drop in zip(batch.items, dropped, strict=True) if drop]
    rest = batch.without(gone)
    assert rest.items == [i for i, drop in zip(batch.items, dropped, strict=True) if not drop]
    assert rest.kind == kind and rest.reserved == EVENTS_BULK
    assert rest.size == len(orjson.dumps(body_of(rest)))


def test_a_batch_closes_only_when_the_next_item_would_not_fit() -> None:
    rng = random.Random(7)
    limit = 20_000
    lane = Lane("events", 1000, limit)
    closed = 0
    for n in range(2_000):
        item = random_event(rng, n)
        open_batch = lane._open
        cost = open_batch.cost(item) if open_batch is not None else 0
        before = open_batch.size if open_batch is not None else 0
        lane.add(item)
        if lane._open is not open_batch and open_batch is not None:
            closed += 1
            assert open_batch.size <= limit
            assert before + cost > limit, "closed a batch that still had room"
    assert closed > 10


def test_an_empty_batch_has_the_envelope_size() -> None:
    for kind in ("events", "profiles"):
        assert Batch(kind).size == len(orjson.dumps(body_of(Batch(kind))))  # type: ignore[arg-type]


def test_a_string_over_100_kb_is_a_mapping_error() -> None:
    rng = random.Random(1)
    item = random_event(rng, 1)
    assert item.event is not None
    with pytest.raises(MappingError, match="100 KB"):
        Item("events", item.profile, {**item.event, "properties": {"x": "é" * 60_000}}, [])
    fits = Item("events", item.profile, {**item.event, "properties": {"x": "a" * 100_000}}, [])
    assert fits.size > MAX_STRING_BYTES - 10_000


async def test_the_requests_actually_sent_have_the_accounted_length() -> None:
    """Through the real client and deliver stage into the sandbox, whose log keeps each body."""
    rng = random.Random(3)
    lanes = {"events": Lane("events", 1000, 40_000), "profiles": Lane("profiles", 10_000, 40_000)}
    for n in range(600):
        item = random_event(rng, n) if n % 5 else random_profile(rng, n)
        lanes[item.kind].add(item)
    batches = [b for lane in lanes.values() for b in lane.drain()]
    bulk = [b for b in batches if len(b) > 3]  # smaller ones use the single-item endpoints
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        client = KlaviyoClient(sandbox.url, SecretStr(SANDBOX_API_KEY), "2026-07-15")
        async with client:
            deliverer = Deliverer(client, governor=Governor({}))  # the sandbox: no limits
            for batch in bulk:
                settlement = await deliverer.send(batch)
                assert not settlement.failed, settlement.failed[0].error
        log = (await sandbox_get(sandbox.url, "/sandbox/requests"))["requests"]
    sent = [r for r in log if r["path"] in (EVENTS_BULK, PROFILES_BULK)]
    assert [r["status"] for r in sent] == [202] * len(bulk)
    assert [len(orjson.dumps(r["body"])) for r in sent] == [b.size for b in bulk]
