"""Identity you can trust, case by case, through the real broker and the service as a process.

Each test publishes the traffic real sites produce (a typo in a phone number, a browser two
people share, a device clock years off, a person split over two Klaviyo profiles that Klaviyo
merges asynchronously) and judges what the sandbox ("Klaviyo") ends up holding. Cases 2 and 3
run on both state backends.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import read_topic, sandbox_get, wait_until
from tests.support.harness import (
    ServiceProcess,
    committed_lag,
    service_env,
    state_dir,
    stats,
    topic_size,
)

NOW = datetime.now(UTC).replace(microsecond=0)


def at(minutes: float) -> str:
    return (NOW - timedelta(hours=2) + timedelta(minutes=minutes)).isoformat()


def call(kind: str, n: int, when: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": f"{kind}-{n}", "timestamp": when or at(n), **fields}


def order(n: int, user: str | None = None, device: str | None = None, **extra: Any) -> dict:
    fields: dict[str, Any] = {"event": "Order Completed", "properties": {"order_id": f"o{n}"}}
    if user:
        fields["userId"] = user
    if device:
        fields["anonymousId"] = device
    return call("track", n, **fields, **extra)


async def run(
    bootstrap: str, topic: str, calls: list[dict[str, Any]], tmp_path: Path, **settings: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """Publish `calls`, run the service until all is committed; (profiles, events, stats)."""
    publish({"bootstrap.servers": bootstrap}, topic, calls, Encoder())
    config = SandboxConfig(rate_limits=False, merge_delay_seconds=settings.pop("merge_delay", 0))
    with SandboxThread(config) as sandbox:
        env = service_env(bootstrap, topic, sandbox.url, state_dir(), **settings)
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:

            async def finished() -> bool:
                assert service.alive, service.log()[-3000:]
                return committed_lag(bootstrap, f"group-{topic}", topic) == 0

            await wait_until(finished, timeout=120, what="every record committed")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        final = await stats(sandbox.url)
    return profiles, events, final


def by_email(profiles: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["attributes"]["email"]: p for p in profiles if p["attributes"].get("email")}


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the state backend under test."""
    if request.param == "redis":
        return {"state_url": request.getfixturevalue("clean_redis_url")}
    return {}


# 1 ----------------------------------------------------------------------------------------------


async def test_case1_an_invalid_field_costs_only_itself(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """A typo'd phone number is dropped (counted, logged without its value); the email, names
    and traits go, and the person's later events land on a profile with the email. A call whose
    only name for its person was the invalid one is a dead letter naming that field."""
    topic = topic_factory(partitions=1)
    calls = [
        call(
            "identify", 1, userId="ann",
            traits={"email": "ann@example.com", "phone": "+1 555 0100", "firstName": "Ann",
                    "plan": "pro"},
        ),
        order(2, user="ann"),
        call(
            "identify", 3, userId="bob",
            traits={"email": "bob@@example", "firstName": "Bob"},  # the email is bad, userId ok
        ),
        call("identify", 4, anonymousId="d-9", traits={"email": "nobody@", "firstName": "X"}),
    ]
    profiles, events, _ = await run(kafka_bootstrap, topic, calls, tmp_path)
    ann = by_email(profiles)["ann@example.com"]
    assert ann["attributes"]["first_name"] == "Ann" and ann["properties"]["plan"] == "pro"
    assert ann["attributes"].get("phone_number") is None
    [event] = [e for e in events if e["unique_id"] == "track-2"]
    assert event["profile_id"] == ann["id"]
    [bob] = [p for p in profiles if p["attributes"].get("external_id") == "bob"]
    assert bob["attributes"]["first_name"] == "Bob" and not bob["attributes"].get("email")
    [letter] = read_topic(kafka_bootstrap, f"{topic}-dlq", 1)
    headers = dict(letter.headers())
    assert headers["dlq.original.offset"] == b"3" and b"email" in headers["dlq.error.message"]
    assert b"nobody" not in headers["dlq.error.message"]


# 2 ----------------------------------------------------------------------------------------------


async def test_case2_two_people_on_one_browser_stay_two_people(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, backend: dict[str, Any]
) -> None:
    """Ann logs in and orders on a browser; Bea logs in on the same browser (its anonymousId
    never reset) and orders. They stay two persons with their own profiles, each order on its
    buyer's profile, no merge; what the browser does after Bea's login is Bea's."""
    topic = topic_factory(partitions=1)
    browser = "browser-1"
    calls = [
        call("identify", 1, userId="ann", anonymousId=browser,
             traits={"email": "ann@example.com", "firstName": "Ann"}),
        order(2, user="ann", device=browser),
        call("identify", 3, userId="bea", anonymousId=browser,
             traits={"email": "bea@example.com", "firstName": "Bea"}),
        order(4, user="bea", device=browser),
        order(5, device=browser),  # the browser, logged out: the last person on it
        order(6, user="ann", device="ann-phone"),
    ]
    profiles, events, final = await run(kafka_bootstrap, topic, calls, tmp_path, **backend)
    emails = by_email(profiles)
    assert set(emails) == {"ann@example.com", "bea@example.com"}, profiles
    assert emails["ann@example.com"]["attributes"]["external_id"] == "ann"
    assert emails["bea@example.com"]["attributes"]["external_id"] == "bea"
    owner = {e["unique_id"]: e["profile_id"] for e in events}
    ann, bea = emails["ann@example.com"]["id"], emails["bea@example.com"]["id"]
    assert owner == {"track-2": ann, "track-4": bea, "track-5": bea, "track-6": ann}
    assert final["merges"] == 0
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0


# 3 ----------------------------------------------------------------------------------------------


async def test_case3_a_clock_years_off_never_pins_an_email_or_a_trait(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, backend: dict[str, Any]
) -> None:
    """An identify from a device whose clock says 2099 is a dead letter and changes nothing;
    so is a track from 9999, whose email must not reach the graph. A naive timestamp is UTC.
    The identify that follows, at the right time, sets the email and the trait."""
    topic = topic_factory(partitions=1)
    calls = [
        call("identify", 1, userId="cy", traits={"email": "cy@example.com", "plan": "free"}),
        call("identify", 2, when="2099-01-01T00:00:00Z", userId="cy",
             traits={"email": "cy-2099@example.com", "plan": "from-the-future"}),
        call("track", 3, when="9999-01-01T00:00:00", userId="cy", event="Viewed Product",
             context={"traits": {"email": "cy-9999@example.com"}}),
        call("identify", 4, when=at(4).replace("+00:00", ""), userId="cy",  # naive: UTC
             traits={"email": "cy.new@example.com", "plan": "pro"}),
        order(5, user="cy"),
    ]
    profiles, events, _ = await run(kafka_bootstrap, topic, calls, tmp_path, **backend)
    [cy] = [p for p in profiles if p["attributes"].get("external_id") == "cy"]
    assert cy["attributes"]["email"] == "cy.new@example.com"
    assert cy["properties"]["plan"] == "pro"
    assert not any("9999" in (p["attributes"].get("email") or "") for p in profiles)
    assert {e["unique_id"]: e["profile_id"] for e in events} == {"track-5": cy["id"]}
    letters = read_topic(kafka_bootstrap, f"{topic}-dlq", 2)
    assert sorted(dict(m.headers())["dlq.original.offset"] for m in letters) == [b"1", b"2"]


# 4 ----------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_case4_split_profiles_heal_although_klaviyo_merges_asynchronously(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """People split in two at Klaviyo (a newsletter email first, an app userId later), then a
    login naming both: one merge per person, each waited for (Klaviyo applies merges about a
    second later), and every person ends as one profile with both identifiers. None is
    dead-lettered after repeated 409s."""
    people = 40
    topic = topic_factory(partitions=1)
    split = [call("identify", n, traits={"email": f"s{n}@example.com"}) for n in range(people)]
    split += [call("identify", 100 + n, userId=f"app-{n}") for n in range(people)]
    login = [
        call("identify", 200 + n, userId=f"app-{n}", traits={"email": f"s{n}@example.com"})
        for n in range(people)
    ]
    publish({"bootstrap.servers": kafka_bootstrap}, topic, split, Encoder())
    config = SandboxConfig(rate_limits=False, merge_delay_seconds=1.0)
    with SandboxThread(config) as sandbox:
        env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir())
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:

            async def profiles_exist(count: int) -> bool:
                assert service.alive, service.log()[-3000:]
                return int((await stats(sandbox.url))["profiles"]) >= count

            await wait_until(lambda: profiles_exist(2 * people), timeout=120, what="the split")
            publish({"bootstrap.servers": kafka_bootstrap}, topic, login, Encoder())

            async def healed() -> bool:
                assert service.alive, service.log()[-3000:]
                if committed_lag(kafka_bootstrap, f"group-{topic}", topic):
                    return False
                merges = (await sandbox_get(sandbox.url, "/sandbox/merges"))["merges"]
                return all(m["status"] != "pending" for m in merges)

            await wait_until(healed, timeout=300, what="every person healed")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    assert len(profiles) == people
    external = Counter(p["attributes"].get("external_id") for p in profiles)
    assert set(external) == {f"app-{n}" for n in range(people)}
    for p in profiles:
        n = p["attributes"]["external_id"].removeprefix("app-")
        assert p["attributes"]["email"] == f"s{n}@example.com"
