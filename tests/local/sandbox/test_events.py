"""unique_id refusal, same-second collisions, and which profile an event lands on."""

from __future__ import annotations

import aiohttp

from stream.local.sandbox import SandboxServer
from tests.support.sandbox import (
    bulk_entry,
    bulk_event,
    bulk_events,
    event,
    inspect,
    post,
    profile,
    upsert,
)


async def test_repeated_unique_id_is_silently_refused(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = event(unique_id="msg-1", time="2024-05-01T10:00:00Z", properties={"n": 1})
    assert (await post(http, f"{sandbox.url}/api/events", body))[0] == 202
    later = event(unique_id="msg-1", time="2024-05-01T11:00:00Z", properties={"n": 2})
    assert (await post(http, f"{sandbox.url}/api/events", later))[0] == 202
    events = (await inspect(http, sandbox.url, "events"))["events"]
    assert [e["properties"] for e in events] == [{"n": 1}]
    assert (await inspect(http, sandbox.url, "stats"))["refused_duplicates"] == 1
    other_metric = event(metric="Refunded", unique_id="msg-1")
    assert (await post(http, f"{sandbox.url}/api/events", other_metric))[0] == 202
    assert len((await inspect(http, sandbox.url, "events"))["events"]) == 2


async def test_unique_id_repeated_inside_one_bulk_fails_the_whole_request(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = bulk_events(
        bulk_entry(profile(email="other@example.com"), bulk_event(unique_id="a")),
        bulk_entry(
            profile(email="ada@example.com"), bulk_event(unique_id="x"), bulk_event(unique_id="y")
        ),
        bulk_entry(profile(email="ADA@example.com"), bulk_event(unique_id="x")),
    )
    status, answer, _ = await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", body)
    assert status == 400
    pointer = answer["errors"][0]["source"]["pointer"]
    entry = "/data/attributes/events-bulk-create/data/2"
    assert pointer == f"{entry}/attributes/events/data/0/attributes/unique_id"
    assert sandbox.store.events == [] and sandbox.store.profiles == {}


async def test_same_unique_id_for_different_people_in_one_bulk_is_fine(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = bulk_events(
        bulk_entry(profile(email="a@example.com"), bulk_event(unique_id="x")),
        bulk_entry(
            profile(email="b@example.com"),
            bulk_event(unique_id="x"),
            bulk_event("Other", unique_id="x"),
        ),
    )
    assert (await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", body))[0] == 202
    assert len(sandbox.store.events) == 3


async def test_without_unique_id_one_event_per_person_metric_and_second(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    for moment in ("2024-05-01T10:00:00.100Z", "2024-05-01T10:00:00.900Z", "2024-05-01T10:00:01Z"):
        assert (await post(http, f"{sandbox.url}/api/events", event(time=moment)))[0] == 202
    events = (await inspect(http, sandbox.url, "events"))["events"]
    assert [e["time"] for e in events] == ["2024-05-01T10:00:00+00:00", "2024-05-01T10:00:01+00:00"]
    assert (await inspect(http, sandbox.url, "stats"))["refused_duplicates"] == 1


async def test_event_profile_resolution_and_attachment(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, created, _ = await post(
        http, f"{sandbox.url}/api/profile-import", upsert(external_id="u-1")
    )
    assert status == 201
    pid = created["data"]["id"]
    who = profile(external_id="u-1", email="New@Example.com", properties={"plan": "pro"})
    assert (
        await post(
            http, f"{sandbox.url}/api/events", event(who=who, value=9.5, value_currency="EUR")
        )
    )[0] == 202
    [stored] = (await inspect(http, sandbox.url, "events"))["events"]
    assert (
        stored["profile_id"] == pid and stored["value"] == 9.5 and stored["value_currency"] == "EUR"
    )
    snapshot = (await inspect(http, sandbox.url, "profiles"))["profiles"]
    assert len(snapshot) == 1
    assert snapshot[0]["attributes"]["email"] == "new@example.com"
    assert snapshot[0]["properties"] == {"plan": "pro"}


async def test_backfill_flag_is_recorded(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = bulk_events(
        bulk_entry(
            profile(email="a@example.com"),
            bulk_event(backfill=True, unique_id="1"),
            bulk_event(unique_id="2"),
        )
    )
    assert (await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", body))[0] == 202
    events = (await inspect(http, sandbox.url, "events"))["events"]
    assert [e["backfill"] for e in events] == [True, False]


async def test_unknown_bare_profile_id_is_400(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    who = {"type": "profile", "id": "01NOPE", "attributes": {}}
    status, body, _ = await post(http, f"{sandbox.url}/api/events", event(who=who))
    assert status == 400
    assert body["errors"][0]["source"]["pointer"] == "/data/attributes/profile/data/id"


async def test_event_times_are_stored_in_utc_to_the_second(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    sent = [
        "2024-05-01T12:00:00+02:00",
        "2024-05-01T10:00:01+00:00",
        "2024-05-01T10:00:02",
        "2024-05-01T10:00:03.700Z",
        "2024-05-01 10:00:04+00:00",
    ]
    events = [bulk_event(time=t, unique_id=str(i)) for i, t in enumerate(sent)]
    body = bulk_events(bulk_entry(profile(email="a@example.com"), *events))
    assert (await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", body))[0] == 202
    stored = [e["time"] for e in (await inspect(http, sandbox.url, "events"))["events"]]
    assert stored == [f"2024-05-01T10:00:0{i}+00:00" for i in range(5)]
    [person] = (await inspect(http, sandbox.url, "profiles"))["profiles"]
    assert person["last_event_date"] == "2024-05-01T10:00:04+00:00"


async def test_bulk_entry_backfill_is_the_default_of_its_events(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    entry = bulk_entry(
        profile(email="a@example.com"),
        bulk_event(unique_id="1"),
        bulk_event(unique_id="2", backfill=False),
    )
    entry["attributes"]["backfill"] = True
    status, _, _ = await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", bulk_events(entry))
    assert status == 202
    events = (await inspect(http, sandbox.url, "events"))["events"]
    assert [e["backfill"] for e in events] == [True, False]


async def test_acceptances_page_through_stored_events_with_their_acceptance_times(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = event(unique_id="first", time="2024-05-01T10:00:00Z")
    assert (await post(http, f"{sandbox.url}/api/events", body))[0] == 202
    page = await inspect(http, sandbox.url, "acceptances")
    assert page["next"] == 1
    [[unique_id, received]] = page["acceptances"]
    assert unique_id == "first"
    assert received == (await inspect(http, sandbox.url, "events"))["events"][0]["received"]
    refused = event(unique_id="first", time="2024-05-01T11:00:00Z")  # a repeat is not stored
    later = bulk_events(
        bulk_entry(profile(email="b@example.com"), bulk_event(unique_id="b1")),
        bulk_entry(profile(email="c@example.com"), bulk_event(unique_id="c1")),
    )
    await post(http, f"{sandbox.url}/api/events", refused)
    await post(http, f"{sandbox.url}/api/event-bulk-create-jobs", later)
    rest = await inspect(http, sandbox.url, f"acceptances?start={page['next']}")
    assert [a[0] for a in rest["acceptances"]] == ["b1", "c1"] and rest["next"] == 3
    assert rest["acceptances"][0][1] >= received  # ISO 8601 UTC: later sorts later
    async with http.get(f"{sandbox.url}/sandbox/acceptances?start=-1") as r:
        assert r.status == 400
