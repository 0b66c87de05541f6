"""Deletion through the real broker, on both state backends: a `delete` call erases the person
at Klaviyo (one request per person, confirmed by lookups) and here (graph, traits, held calls),
a person seen again is a new person, and records older than the deletion, read again, bring
nothing back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.state import open_store
from stream.telemetry import metrics
from tests.support import running_service, sandbox_get, service_settings, wait_until
from tests.support.consent import DELETION, call, profiles, publish, requests_to

ADA = {"email": "ada@example.com", "phone": "+14155552671"}
BACKENDS = ["sqlite", "redis"]


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(params=BACKENDS)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("clean_redis_url"))


@pytest.fixture
async def klaviyo() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(SandboxConfig(deletion_delay_seconds=0.05)) as server:
        yield server


async def settled(url: str) -> dict[str, Any]:
    report: dict[str, Any] = await sandbox_get(url, "/sandbox/deleted")
    return report


async def test_delete_erases_the_person_at_klaviyo_and_here_and_a_comeback_is_new(
    kafka_bootstrap: str, topic_factory: Any, klaviyo: SandboxServer, state_url: str
) -> None:
    topic = topic_factory(partitions=1)
    before_delete = [
        call("identify", 1, userId="u-ada", anonymousId="a-1", traits={**ADA, "plan": "gold"}),
        call("track", 2, userId="u-ada", event="Viewed Product", properties={"sku": "A"}),
        call("track", 3, anonymousId="a-9", event="Viewed Product"),  # someone held, unnamed
    ]
    after = [
        call("delete", 10, traits={"email": "ada@example.com"}),
        call("delete", 11, anonymousId="a-9"),  # an anonymous erasure: forgotten here only
        # the person comes back at once, newer than the deletion: a new person, a new profile
        call("identify", 20, traits={"email": "ada@example.com", "firstName": "Back"}),
    ]
    before = {k: sample("klaviyo_stream_forgotten_total", kind=k)
              for k in ("persons", "identifiers", "held_calls")}  # fmt: skip
    url = klaviyo.url
    settings = service_settings(kafka_bootstrap, topic, url, state_url=state_url)

    async def at_klaviyo() -> bool:
        events = (await sandbox_get(url, "/sandbox/events"))["events"]
        return len(await profiles(url)) == 1 and len(events) == 1

    async def done() -> bool:
        live = [p for p in await profiles(url) if p["attributes"]["email"] == "ada@example.com"]
        report = await settled(url)
        return bool(report["deleted"]) and report["pending"] == 0 and len(live) == 1 and (
            live[0]["attributes"]["first_name"] == "Back"
        )

    async with running_service(settings) as service:
        publish(kafka_bootstrap, topic, before_delete)
        await wait_until(at_klaviyo, timeout=60, what="Ada's profile and event at Klaviyo")
        [ada] = await profiles(url)
        publish(kafka_bootstrap, topic, after)
        await wait_until(done, timeout=60, what="deleted, then back as a new profile")
    report = await settled(url)
    deletions = [r["body"]["data"]["attributes"]["profile"]["data"]
                 for r in await requests_to(url, DELETION)]  # fmt: skip
    [back] = await profiles(url)
    events = (await sandbox_get(url, "/sandbox/events"))["events"]
    lookups = [r["query"].get("filter") for r in await requests_to(url, "/api/profiles", "GET")]

    assert service.result.dead_lettered == 0
    [gone] = report["deleted"]
    assert gone["identifiers"]["external_id"] == "u-ada" and gone["events_deleted"] == 1
    # case 15: one deletion for the person, by the profile id its upsert answered with
    assert deletions == [{"type": "profile", "id": ada["id"], "attributes": {}}]
    # case 4: confirmed by looking each of its identifiers up once the deletion had landed
    assert {'any(email,["ada@example.com"])', 'any(phone_number,["+14155552671"])',
            'any(external_id,["u-ada"])'} <= set(lookups)  # fmt: skip
    # the comeback: a new profile with nothing of the old person
    assert back["id"] != gone["id"]
    assert back["attributes"]["external_id"] is None
    assert back["attributes"]["phone_number"] is None
    assert "plan" not in back["properties"] and events == []
    # and here: the graph, the traits and the held calls are gone; tombstones stay
    store = open_store(state_url)
    try:
        assert store.lookup(("external_id", "u-ada")) is None
        assert store.lookup(("phone", "+14155552671")) is None
        assert store.lookup(("anonymous_id", "a-1")) is None
        assert store.lookup(("anonymous_id", "a-9")) is None
        new = store.lookup(("email", "ada@example.com"))
        assert new is not None and set(new.identifiers) == {"email"}
        assert not any(k in new.traits for k in ("plan", "phone"))
        assert store.held_count() == 0
        assert len(store.tombstones()[0]) == 5  # email, phone, u-ada, a-1, a-9
        assert store.open_erasures() == set()  # both done: confirmed, or nothing to send
    finally:
        store.close()
    forgotten = {k: sample("klaviyo_stream_forgotten_total", kind=k) - v
                 for k, v in before.items()}  # fmt: skip
    # a-9 was no person in the graph, only calls held under it
    assert forgotten == {"persons": 1, "identifiers": 5, "held_calls": 1}


async def test_pre_deletion_records_read_again_bring_nothing_back(
    kafka_bootstrap: str, topic_factory: Any, klaviyo: SandboxServer, state_url: str
) -> None:
    """The whole topic is read again by a new group once the dedup window has passed (the
    worst re-read): the records older than the deletion are dropped, the delete call is done
    already, and only the newer call of the person who came back is sent (again, harmlessly)."""
    topic = topic_factory(partitions=1)
    calls = [
        call("identify", 1, userId="u-ada", traits=ADA),
        call("track", 2, userId="u-ada", event="Viewed Product"),
        call("delete", 10, userId="u-ada"),
        call("identify", 20, traits={"email": "ada@example.com"}),
    ]
    url = klaviyo.url
    first = service_settings(kafka_bootstrap, topic, url, state_url=state_url,
                             dedup_window_seconds=1.0)  # fmt: skip

    async def at_klaviyo() -> bool:
        return len((await sandbox_get(url, "/sandbox/events"))["events"]) == 1

    async def deleted_and_back() -> bool:
        report = await settled(url)
        return bool(report["deleted"]) and report["pending"] == 0 and len(await profiles(url)) == 1

    async with running_service(first):
        publish(kafka_bootstrap, topic, calls[:2])
        await wait_until(at_klaviyo, timeout=60, what="the person at Klaviyo")
        publish(kafka_bootstrap, topic, calls[2:])
        await wait_until(deleted_and_back, timeout=60, what="deleted, then back")
    [back] = await profiles(url)
    deletions = len(await requests_to(url, DELETION))

    store = open_store(state_url, dedup_window_seconds=1.0)
    ids = [c["messageId"] for c in calls]

    async def window_passed() -> bool:
        return not store.seen(ids)

    try:
        await wait_until(window_passed, timeout=30, what="the dedup window to pass", poll=0.2)
    finally:
        store.close()
    dropped = sample("klaviyo_stream_records_tombstoned_total")
    again = service_settings(kafka_bootstrap, topic, url, state_url=state_url,
                             dedup_window_seconds=1.0,
                             kafka_group_id=f"again-{time.time_ns()}")  # fmt: skip

    async def reread() -> bool:
        return sample("klaviyo_stream_records_tombstoned_total") >= dropped + 2 and len(
            await requests_to(url, "/api/profile-import")
        ) >= 3

    async with running_service(again) as service:
        await wait_until(reread, timeout=60, what="the topic read again")
    assert service.result.dead_lettered == 0
    assert sample("klaviyo_stream_records_tombstoned_total") == dropped + 2
    assert len(await requests_to(url, DELETION)) == deletions  # not deleted again
    [still] = await profiles(url)
    assert still["id"] == back["id"] and still["attributes"]["external_id"] is None
    assert (await sandbox_get(url, "/sandbox/events"))["events"] == []
