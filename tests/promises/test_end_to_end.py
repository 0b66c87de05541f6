"""The walking skeleton through real parts: a real broker, the real service, the sandbox.

10,000 mixed identify/track/page calls on a 3-partition topic must arrive exactly once, on the
right profile, with the right mapping, in both encodings users have (Confluent's through the real
Schema Registry).
"""

from __future__ import annotations

from collections import Counter
from contextlib import closing
from typing import Any

from stream.core.settings import Settings
from stream.intake.decode import RegistryDecoder, make_decoder
from stream.klaviyo.mapping import event_time
from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish
from tests.support import running_service, sandbox_get, service_settings, wait_until
from tests.support.registry import Registry

RECORDS = 10_000


async def deliver_and_check(
    bootstrap: str, topic: str, encoder: Encoder, decoder: RegistryDecoder | None = None
) -> None:
    calls = list(sample_calls(RECORDS, seed=11, persons=700))
    publish({"bootstrap.servers": bootstrap}, topic, calls, encoder)
    expected = {c["messageId"]: c for c in calls if c["type"] in ("track", "page")}
    persons = {c["userId"]: c for c in calls if c["type"] == "identify"}

    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(bootstrap, topic, sandbox.url)

        async def all_arrived() -> bool:
            events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
            profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
            return len(events) >= len(expected) and len(profiles) >= len(persons)

        async with running_service(settings, decoder) as service:
            await wait_until(all_arrived, timeout=240, what="every event and profile")
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        profiles = {
            p["id"]: p for p in (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
        }

    assert service.result.dead_lettered == 0
    assert service.result.consumed == RECORDS
    # exactly once
    counts = Counter(e["unique_id"] for e in events)
    assert set(counts) == set(expected)
    assert max(counts.values()) == 1
    # one profile per person, mapped from the identify call
    assert len(profiles) == len(persons)
    by_external_id = {p["attributes"]["external_id"]: p for p in profiles.values()}
    for user_id, identify in persons.items():
        attrs = by_external_id[user_id]["attributes"]
        traits = identify["traits"]
        assert attrs["email"] == traits["email"]
        assert attrs["first_name"] == traits["firstName"]
        assert attrs["last_name"] == traits["lastName"]
        assert attrs["title"] == traits["title"]
        assert attrs["phone_number"] == traits.get("phone")
        assert by_external_id[user_id]["properties"]["newsletter"] is traits["newsletter"]
    # every event on the right profile, with the right mapping
    for event in events:
        call = expected[event["unique_id"]]
        profile = profiles[event["profile_id"]]
        assert profile["attributes"]["external_id"] == call["userId"]
        assert event["metric"] == (call["event"] if call["type"] == "track" else "Viewed Page")
        assert event["properties"] == call["properties"]
        assert event["value"] == call["properties"].get("revenue")
        assert event_time(event["time"]) == event_time(call["timestamp"])


async def test_ten_thousand_mixed_calls_arrive_exactly_once_local_encoding(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    await deliver_and_check(kafka_bootstrap, topic_factory(partitions=3), Encoder())


async def test_ten_thousand_mixed_calls_arrive_exactly_once_schema_registry(
    kafka_bootstrap: str, topic_factory: Any, registry: Registry
) -> None:
    """Through the real registry (Apicurio): our schemas registered by `publish` (produce's)
    through the Confluent API, the service reading as a principal that may only read."""
    topic = topic_factory(partitions=3)
    decoder = make_decoder(Settings(**registry.settings("reader")))  # type: ignore[arg-type]
    assert isinstance(decoder, RegistryDecoder)
    with registry.client("writer") as client, closing(decoder):
        await deliver_and_check(
            kafka_bootstrap, topic, Encoder(registry=client, topic=topic), decoder
        )
