"""Consent and list actions through the real broker, the real service and the Klaviyo sandbox:
each action per call and by rule, a list removal that stays a list removal, live versus
backfill subscriptions, latest consent wins, client mode."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stream.core.errors import ConsentConfigError
from stream.engine.service import Service
from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from stream.telemetry import metrics
from tests.support import (
    read_topic,
    running_service,
    sandbox_get,
    service_settings,
    wait_until,
)
from tests.support.consent import (
    SUBSCRIBE,
    SUPPRESS,
    UNSUBSCRIBE,
    UNSUPPRESS,
    action_log,
    call,
    consent_jobs,
    klaviyo,
    members,
    profile_with,
    publish,
    requests_to,
)
from tests.support.destination import write_yaml

LISTS = (SeedList("NEWS01", "Newsletter"), SeedList("VIP001", "VIP"), SeedList("ACME01", "Acme"))


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_per_call_subscribe_lists_and_suppression_reach_klaviyo(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """One identify asks everything at once; a later track unsubscribes, unsuppresses and leaves
    a list. Each change is its own request at its own endpoint, on the one profile."""
    topic = topic_factory(partitions=1)
    ada = {"email": "ada@example.com", "phone": "+1 (415) 555-2671"}
    calls = [
        call("identify", 1, userId="u-ada", traits=ada, integrations=klaviyo(
            subscribe={"email": True, "sms": True, "list_id": "NEWS01"},
            lists={"add": ["VIP001"]},
            suppress=True,
        )),
        call("track", 2, userId="u-ada", event="Settings Saved", integrations=klaviyo(
            unsubscribe=["sms"], suppress=False, lists={"remove": ["VIP001"]},
        )),
    ]  # fmt: skip
    publish(kafka_bootstrap, topic, calls)
    async with SandboxServer(SandboxConfig(lists=LISTS)) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)

        async def done() -> bool:
            return (
                len(await requests_to(sandbox.url, UNSUPPRESS)) == 1
                and len(await requests_to(sandbox.url, "/api/lists/VIP001", "DELETE")) == 1
                and len(await requests_to(sandbox.url, UNSUBSCRIBE)) == 1
            )

        async with running_service(settings) as service:
            await wait_until(done, timeout=60, what="every action answered")
        profile = await profile_with(sandbox.url, email="ada@example.com")
        subscribed = (await requests_to(sandbox.url, SUBSCRIBE))[0]["body"]
        unsubscribed = (await requests_to(sandbox.url, UNSUBSCRIBE))[0]["body"]
        added = await requests_to(sandbox.url, "/api/lists/VIP001")
        jobs = await consent_jobs(sandbox.url)
        news = await members(sandbox.url, "NEWS01")
        vip = await members(sandbox.url, "VIP001")
        suppressed = await requests_to(sandbox.url, SUPPRESS)
        order = await action_log(sandbox.url)

    assert service.result.dead_lettered == 0
    assert profile is not None and profile["attributes"]["external_id"] == "u-ada"
    consent = profile["consent"]
    assert consent["email.marketing"]["state"] == "subscribed"
    assert consent["email.marketing"]["custom_source"] == "klaviyo-stream"
    assert consent["sms.marketing"]["state"] == "unsubscribed"  # the later call withdrew it
    assert news == [profile["id"]] and vip == []  # joined NEWS01; VIP001 joined, then left
    assert profile["suppressions"] == [] and len(suppressed) == 1  # suppressed, then lifted
    # one person's changes go one at a time, in the order of the calls that asked them
    assert [j["kind"] for j in jobs] == ["subscribe", "suppress", "unsubscribe", "unsuppress"]
    vip_path = "/api/lists/VIP001/relationships/profiles"
    assert order == [
        ("POST", SUBSCRIBE), ("POST", SUPPRESS), ("POST", vip_path),
        ("POST", UNSUBSCRIBE), ("POST", UNSUPPRESS), ("DELETE", vip_path),
    ]  # fmt: skip
    # the requests as Klaviyo's API takes them: email and E.164 phone, the list once
    entry = subscribed["data"]["attributes"]["profiles"]["data"][0]["attributes"]
    assert (entry["email"], entry["phone_number"]) == ("ada@example.com", "+14155552671")
    assert subscribed["data"]["relationships"]["list"]["data"]["id"] == "NEWS01"
    assert "relationships" not in unsubscribed["data"]  # an unsubscribe never names a list
    assert added[0]["body"] == {"data": [{"type": "profile", "id": profile["id"]}]}


async def test_rules_subscribe_unsubscribe_and_map_groups_even_for_calls_routing_filters(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """A consent file: identify with traits.newsletter → subscribe email to NEWS01; track `SMS
    Opt Out` → unsubscribe sms; group `acme` → join ACME01. Event definitions send identify
    calls only: the opt-out and the group are not sent themselves, what they ask still is."""
    rules = write_yaml(tmp_path, "consent.yaml", {"rules": [
        {"when": {"type": "identify", "traits": {"newsletter": True}},
         "subscribe": {"email": True, "list_id": "NEWS01"}},
        {"when": {"type": "track", "event": "SMS Opt Out"}, "unsubscribe": ["sms"]},
        {"when": {"type": "group"}, "group_lists": {"acme": "ACME01"}},
    ]})  # fmt: skip
    definitions = write_yaml(tmp_path, "defs.yaml", {"events": [{"type": "identify"}]})
    topic = topic_factory(partitions=1)
    ada = {"email": "ada@example.com", "phone": "+14155552671", "newsletter": True}
    bob = {"email": "bob@example.com", "newsletter": False}
    calls = [
        call("identify", 1, userId="u-ada", traits=ada),
        call("identify", 2, userId="u-bob", traits=bob),
        call("track", 3, userId="u-ada", event="SMS Opt Out"),
        call("group", 4, userId="u-ada", groupId="acme", traits={"name": "Acme"}),
        call("group", 5, userId="u-bob", groupId="globex"),
    ]
    publish(kafka_bootstrap, topic, calls)
    filtered = sample("klaviyo_stream_records_filtered_total", type="track", reason="not_defined")
    async with SandboxServer(SandboxConfig(lists=LISTS)) as sandbox:
        settings = service_settings(
            kafka_bootstrap, topic, sandbox.url, consent_file=rules,
            event_definitions_file=definitions,
        )  # fmt: skip

        async def done() -> bool:
            return bool(await members(sandbox.url, "ACME01")) and bool(
                await requests_to(sandbox.url, UNSUBSCRIBE)
            )

        async with running_service(settings) as service:
            await wait_until(done, timeout=60, what="the rules' actions answered")
        ada_profile = await profile_with(sandbox.url, email="ada@example.com")
        bob_profile = await profile_with(sandbox.url, email="bob@example.com")
        news, acme = await members(sandbox.url, "NEWS01"), await members(sandbox.url, "ACME01")
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        jobs = await consent_jobs(sandbox.url)

    assert service.result.dead_lettered == 0
    assert ada_profile is not None and bob_profile is not None
    assert ada_profile["consent"]["email.marketing"]["state"] == "subscribed"
    assert ada_profile["consent"]["sms.marketing"]["state"] == "unsubscribed"
    assert bob_profile["consent"]["email.marketing"]["state"] == "never"  # newsletter: false
    assert news == [ada_profile["id"]] and acme == [ada_profile["id"]]  # globex maps nowhere
    assert ada_profile["attributes"]["organization"] is None  # the group itself was not sent
    assert events == [] and len(jobs) == 2
    assert sample(
        "klaviyo_stream_records_filtered_total", type="track", reason="not_defined"
    ) == filtered + 1


async def test_a_list_removal_never_becomes_a_global_unsubscribe(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """Klaviyo unsubscribes globally a profile that is not on the list an unsubscribe names.
    A list removal goes to the list endpoint only: a member leaves the list, a non-member is
    left alone, and both keep their consent."""
    topic = topic_factory(partitions=1)
    calls = [
        call("identify", 1, userId="u-ada", traits={"email": "ada@example.com"},
             integrations=klaviyo(subscribe={"email": True, "list_id": "NEWS01"})),
        call("identify", 2, userId="u-bob", traits={"email": "bob@example.com"},
             integrations=klaviyo(subscribe={"email": True})),
        call("track", 3, userId="u-ada", event="Left", integrations=klaviyo(
            lists={"remove": ["NEWS01"]})),
        call("track", 4, userId="u-bob", event="Left", integrations=klaviyo(
            lists={"remove": ["NEWS01"]})),  # bob was never on it
    ]  # fmt: skip
    publish(kafka_bootstrap, topic, calls)
    async with SandboxServer(SandboxConfig(lists=LISTS)) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)

        async def done() -> bool:
            removals = await requests_to(sandbox.url, "/api/lists/NEWS01", "DELETE")
            removed = [e["id"] for r in removals for e in r["body"]["data"]]
            return len(removed) == 2  # one request may carry both

        async with running_service(settings) as service:
            await wait_until(done, timeout=60, what="both removals answered")
        people = [await profile_with(sandbox.url, email=e)
                  for e in ("ada@example.com", "bob@example.com")]  # fmt: skip
        news = await members(sandbox.url, "NEWS01")
        unsubscribes = await requests_to(sandbox.url, UNSUBSCRIBE)

    assert service.result.dead_lettered == 0
    assert unsubscribes == [] and news == []
    for person in people:
        assert person is not None
        assert person["consent"]["email.marketing"]["state"] == "subscribed"
        assert person["can_receive"]["email.marketing"] is True
        assert person["suppressions"] == []


async def test_live_subscriptions_are_never_historical_backfill_ones_are(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = topic_factory(partitions=1)
    live = call("identify", 1, userId="u-ada", traits={"email": "ada@example.com"},
                integrations=klaviyo(subscribe={"email": True, "list_id": "NEWS01"}))
    old = call("identify", 2, userId="u-bob", traits={"email": "bob@example.com"},
               integrations=klaviyo(subscribe={"email": True, "list_id": "NEWS01"}))
    publish(kafka_bootstrap, topic, [live])
    publish(kafka_bootstrap, topic, [old], backfill=True)  # as `dlq replay` or `--backfill`
    lists = (SeedList("NEWS01", "Newsletter", double_opt_in=True),)
    async with SandboxServer(SandboxConfig(lists=lists)) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)

        async def done() -> bool:
            return len(await requests_to(sandbox.url, SUBSCRIBE)) == 2

        async with running_service(settings):
            await wait_until(done, timeout=60, what="two subscriptions")
        bodies = [r["body"]["data"] for r in await requests_to(sandbox.url, SUBSCRIBE)]
        ada = await profile_with(sandbox.url, email="ada@example.com")
        bob = await profile_with(sandbox.url, email="bob@example.com")

    by_email = {b["attributes"]["profiles"]["data"][0]["attributes"]["email"]: b for b in bodies}
    live_body, old_body = by_email["ada@example.com"], by_email["bob@example.com"]
    assert "historical_import" not in live_body["attributes"]
    assert "consented_at" not in str(live_body)
    assert old_body["attributes"]["historical_import"] is True
    consent = old_body["attributes"]["profiles"]["data"][0]["attributes"]["subscriptions"]
    assert consent["email"]["marketing"]["consented_at"][:19] == old["timestamp"][:19]
    assert ada is not None and bob is not None
    # the live one waits for its double opt-in; the historical one skipped it, with its time
    assert ada["consent"]["email.marketing"]["state"] == "pending"
    assert bob["consent"]["email.marketing"]["state"] == "subscribed"
    assert bob["consent"]["email.marketing"]["historical"] is True


async def test_an_old_subscribe_after_a_newer_opt_out_is_not_sent(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """Ada's opt-out (time 10) arrives before her older subscription (time 5, a late or
    replayed call): the subscription is not sent, it would lift her unsubscription. Bob's come
    in time order: both are sent, in that order, and he ends unsubscribed."""
    topic = topic_factory(partitions=1)
    ada, bob = {"email": "ada@example.com"}, {"email": "bob@example.com"}
    calls = [
        call("identify", 10, userId="u-ada", traits=ada,
             integrations=klaviyo(unsubscribe=["email"])),
        call("identify", 5, userId="u-ada", traits=ada,
             integrations=klaviyo(subscribe={"email": True})),
        call("identify", 5, userId="u-bob", traits=bob,
             integrations=klaviyo(subscribe={"email": True})),
        call("identify", 10, userId="u-bob", traits=bob,
             integrations=klaviyo(unsubscribe=["email"])),
    ]  # fmt: skip
    publish(kafka_bootstrap, topic, calls)
    overtaken = sample("klaviyo_stream_consent_overtaken_total", channel="email")
    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)

        async def done() -> bool:
            return len(await requests_to(sandbox.url, UNSUBSCRIBE)) == 2 and (
                len(await requests_to(sandbox.url, SUBSCRIBE)) == 1
            )

        async with running_service(settings) as service:
            await wait_until(done, timeout=60, what="the opt-outs and bob's subscription")
        ada_profile = await profile_with(sandbox.url, email="ada@example.com")
        bob_profile = await profile_with(sandbox.url, email="bob@example.com")
        jobs = await consent_jobs(sandbox.url)

    assert service.result.dead_lettered == 0
    assert sample("klaviyo_stream_consent_overtaken_total", channel="email") == overtaken + 1
    assert ada_profile is not None and bob_profile is not None
    assert ada_profile["consent"]["email.marketing"]["state"] == "unsubscribed"
    assert bob_profile["consent"]["email.marketing"]["state"] == "unsubscribed"
    bobs = [j["kind"] for j in jobs if j["results"][0]["profile_id"] == bob_profile["id"]]
    assert bobs == ["subscribe", "unsubscribe"]
    adas = [j["kind"] for j in jobs if j["results"][0]["profile_id"] == ada_profile["id"]]
    assert adas == ["unsubscribe"]


async def test_a_change_that_cannot_be_sent_is_its_own_dead_letter(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """SMS needs a phone: Ada has none, so her sms subscription is dead-lettered (named in
    `dlq.item`) and her email one goes; an anonymous visitor's subscription names no one."""
    topic = topic_factory(partitions=1)
    calls = [
        call("identify", 1, userId="u-ada", traits={"email": "ada@example.com"},
             integrations=klaviyo(subscribe={"email": True, "sms": True})),
        call("track", 2, anonymousId="a-1", event="Footer Signup",
             integrations=klaviyo(subscribe={"email": True})),
    ]  # fmt: skip
    publish(kafka_bootstrap, topic, calls)
    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)
        async with running_service(settings):
            letters = await asyncio.to_thread(read_topic, kafka_bootstrap, settings.dlq_topic, 2)

            async def subscribed() -> bool:
                return len(await requests_to(sandbox.url, SUBSCRIBE)) == 1

            await wait_until(subscribed, timeout=60, what="the email subscription")
        ada = await profile_with(sandbox.url, email="ada@example.com")

    headers = [dict(m.headers()) for m in letters]
    assert sorted(h["dlq.item"] for h in headers) == [b"consent and lists", b"subscribe sms"]
    reasons = {h["dlq.item"]: h["dlq.error.message"].decode() for h in headers}
    assert reasons[b"subscribe sms"] == (
        "subscribe sms: the person has no phone number (E.164) we know"
    )
    assert reasons[b"consent and lists"].startswith("its consent and list changes name no one")
    assert ada is not None and ada["consent"]["email.marketing"]["state"] == "subscribed"
    assert ada["consent"]["sms.marketing"]["state"] == "never"


async def test_client_mode_subscribes_through_the_client_endpoint_and_refuses_the_rest(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    calls = [
        call("identify", 1, userId="u-ada", traits={"email": "ada@example.com"},
             integrations=klaviyo(subscribe={"email": True, "list_id": "NEWS01"})),
        call("identify", 2, userId="u-bob", traits={"email": "bob@example.com"},
             integrations=klaviyo(unsubscribe=["email"])),
    ]  # fmt: skip
    publish(kafka_bootstrap, topic, calls)
    async with SandboxServer(SandboxConfig(lists=LISTS)) as sandbox:
        settings = service_settings(
            kafka_bootstrap, topic, sandbox.url,
            klaviyo_mode="client", klaviyo_public_key="SBXPUB",
        )  # fmt: skip
        async with running_service(settings):
            [letter] = await asyncio.to_thread(read_topic, kafka_bootstrap, settings.dlq_topic, 1)

            async def subscribed() -> bool:
                return bool(await members(sandbox.url, "NEWS01"))

            await wait_until(subscribed, timeout=60, what="the client subscription")
        ada = await profile_with(sandbox.url, email="ada@example.com")
        log = (await sandbox_get(sandbox.url, "/sandbox/requests"))["requests"]

    assert all(r["path"].startswith("/client/") for r in log)
    [sub] = [r for r in log if r["path"].rstrip("/") == "/client/subscriptions"]
    assert sub["query"] == {"company_id": "SBXPUB"} and sub["status"] == 202
    assert ada is not None and ada["consent"]["email.marketing"]["state"] == "subscribed"
    headers = dict(letter.headers())
    assert headers["dlq.item"] == b"unsubscribe email"
    assert b"KLAVIYO_MODE=client" in headers["dlq.error.message"]
    # asked by the configuration instead, the same is refused at start, in one line
    rules = write_yaml(tmp_path, "consent.yaml", {"rules": [
        {"when": {"type": "track", "event": "Opt Out"}, "unsubscribe": ["email"]},
    ]})  # fmt: skip
    refused = service_settings(kafka_bootstrap, topic, sandbox.url, klaviyo_mode="client",
                               klaviyo_public_key="SBXPUB", consent_file=rules)  # fmt: skip
    with pytest.raises(ConsentConfigError) as caught:
        Service(refused)
    assert str(caught.value) == (
        f"{rules}: rules[0] (unsubscribe): KLAVIYO_MODE=client can only subscribe "
        "(POST /client/subscriptions); unsubscribe, suppress and lists need server mode"
    )
