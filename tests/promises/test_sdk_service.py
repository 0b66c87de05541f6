"""Calls written by the real Segment and RudderStack libraries, end to end: `produce --input`,
the real broker, the running service, the Klaviyo sandbox.

Profiles (traits in either place, location, company, per-call unset and append), events
(track, page, screen), what is filtered (integrations, group calls without a definition), and
orders: Placed Order plus one Ordered Product per line, exactly once even when replayed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish_file
from stream.telemetry import metrics
from tests.support import read_topic, running_service, sandbox_get, service_settings, wait_until
from tests.support.sdk import ADDRESS, LIBRARIES, calls, email_of, phone_of, user_of

SENT = ("identify", "identify_patch", "signup", "page", "screen", "hidden", "group", "alias")


def filtered(call_type: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "klaviyo_stream_records_filtered_total", {"type": call_type, "reason": reason}
    )
    return value or 0.0


async def test_sdk_calls_reach_klaviyo_as_readme_promises(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=2)
    messages = [calls(library)[name] for library in LIBRARIES for name in SENT]
    path = tmp_path / "sdk.jsonl"
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    report = publish_file({"bootstrap.servers": kafka_bootstrap}, topic, path, Encoder())
    assert report.published == len(messages) and not report.refused
    by_integrations = filtered("track", "integrations")
    groups_not_defined = filtered("group", "not_defined")

    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)

        async def done() -> bool:
            events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
            profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
            return (
                len(events) == 6
                and len(profiles) == 2
                and all(p["attributes"]["organization"] for p in profiles)
                and filtered("track", "integrations") == by_integrations + 2
                and filtered("group", "not_defined") == groups_not_defined + 2
            )

        async with running_service(settings) as service:
            await wait_until(done, timeout=120, what="6 events, 2 profiles, 4 calls filtered")
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]

    assert service.result.dead_lettered == 0
    by_person = {p["attributes"]["external_id"]: p for p in profiles}
    for library in LIBRARIES:
        profile = by_person[user_of(library)]
        assert {k: v for k, v in profile["attributes"].items() if v is not None} == {
            "email": email_of(library),
            "phone_number": phone_of(library)[1],
            "external_id": user_of(library),
            "first_name": "Ada",
            "last_name": "Lovelace",
            "title": "Engineer",
            "organization": "Initech",
        }
        assert profile["location"] == {
            "address1": ADDRESS["street"], "city": "London", "region": "Greater London",
            "zip": "NW1 6XE", "country": "United Kingdom", "latitude": 51.5238,
            "longitude": -0.1586, "timezone": "Europe/London", "ip": "203.0.113.7",
        }  # fmt: skip
        # `trial` came with `integrations.Klaviyo.unset`: never set; `skus` was appended to
        assert profile["properties"] == {
            "plan": "pro", "logins": 7, "company": {"id": "c-42", "industry": "Software"},
            "skus": ["G-32"],
        }  # fmt: skip
        mine = {e["metric"]: e for e in events if e["profile_id"] == profile["id"]}
        assert set(mine) == {"Signed Up", "Viewed Page", "Viewed Screen"}
        assert (mine["Signed Up"]["value"], mine["Signed Up"]["value_currency"]) == (12, "EUR")
        assert mine["Viewed Screen"]["properties"] == {"tab": "feed"}
        assert mine["Viewed Screen"]["unique_id"] == f"{library}-screen"
        assert mine["Viewed Page"]["time"].startswith("2026-03-01T10:00:00")


async def test_an_order_becomes_placed_order_and_one_ordered_product_per_line_exactly_once(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """Segment's Order Completed, as each library writes it, becomes Klaviyo's Placed Order and
    one Ordered Product per line, with Klaviyo's property names; a bad line is a dead letter of
    that line alone (`dlq.item`). Replayed after a crash that lost the dedup store (a fresh
    group and state reading the topic again), every derived event is refused by its
    deterministic unique_id: still exactly one of each."""
    topic = topic_factory(partitions=1)
    messages = []
    for library in LIBRARIES:
        written = calls(library)
        order = dict(written["order"])
        order["properties"] = {**order["properties"],
                               "products": [*order["properties"]["products"], 7]}  # fmt: skip
        messages += [written["identify"], order, written["viewed"]]
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    publish_file({"bootstrap.servers": kafka_bootstrap}, topic, path, Encoder())
    async with SandboxServer(SandboxConfig()) as sandbox:
        for run in ("first", "replay"):
            settings = service_settings(
                kafka_bootstrap, topic, sandbox.url,
                kafka_group_id=f"group-{topic}-{run}", dlq_topic=f"{topic}-dlq-{run}",
            )  # fmt: skip

            async def settled(run: str = run) -> bool:
                stats = await sandbox_get(sandbox.url, "/sandbox/stats")
                if run == "first":
                    return int(stats["events"]) >= 2 * 4
                return int(stats["refused_duplicates"]) >= 2 * 4

            async with running_service(settings) as service:
                await wait_until(settled, timeout=120, what=f"the {run} run's events")
            assert service.result.dead_lettered == 2  # the bad line of each order
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
    by_profile = {p["id"]: p["attributes"]["external_id"] for p in profiles}
    for library in LIBRARIES:
        mine = [e for e in events if by_profile[e["profile_id"]] == user_of(library)]
        by_metric = sorted((e["metric"], e["unique_id"]) for e in mine)
        assert by_metric == [
            ("Ordered Product", f"{library}-order:0"),
            ("Ordered Product", f"{library}-order:1"),
            ("Placed Order", f"{library}-order"),
            ("Viewed Product", f"{library}-viewed"),
        ]
        placed = next(e for e in mine if e["metric"] == "Placed Order")
        assert placed["value"] == 44.0 and placed["properties"]["OrderId"] == "50314b8e"
        assert placed["properties"]["ItemNames"] == ["Winnie the Pooh", "Monopoly"]
        lines = sorted((e for e in mine if e["metric"] == "Ordered Product"),
                       key=lambda e: e["unique_id"])  # fmt: skip
        assert [e["properties"]["ProductName"] for e in lines] == ["Winnie the Pooh", "Monopoly"]
    letters = read_topic(kafka_bootstrap, f"{topic}-dlq-first", 2)
    assert sorted(dict(m.headers())["dlq.item"] for m in letters) == [b"line 2", b"line 2"]
