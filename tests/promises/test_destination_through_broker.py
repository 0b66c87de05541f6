"""Destination features through the real broker, the real service and the Klaviyo sandbox."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish
from stream.telemetry import metrics
from tests.support import running_service, sandbox_get, service_settings, wait_until
from tests.support.destination import write_yaml


def segment(call_type: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": call_type,
        "messageId": f"{call_type}-{n}",
        "timestamp": "2025-03-01T10:00:00Z",
        **fields,
    }


def filtered(call_type: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "klaviyo_stream_records_filtered_total", {"type": call_type, "reason": reason}
    )
    return value or 0.0


async def test_definitions_filter_and_every_rule_kind_server_mode(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    defs = write_yaml(tmp_path, "defs.yaml", {"events": [
        {"type": "identify"},
        {"type": "track", "event": "Order Completed", "metric": "Placed Order"},
        {"type": "track", "event": "Debug Ping", "enabled": False},
        {"type": "page"},
    ]})  # fmt: skip
    rules = write_yaml(tmp_path, "t.yaml", {"transformations": [
        {"when": {"type": "track", "event": "Order Completed"}, "rules": [
            {"rename": {"from": "properties.total", "to": "properties.revenue"}},
            {"drop": "properties.cvv"},
            {"set": {"field": "properties.source", "value": "kafka"}},
            {"copy": {"from": "properties.sku", "to": "properties.product_id"}},
            {"hash": "properties.card"},
            {"map": {"field": "properties.plan", "values": {"g": "Gold"}}},
            {"to_trait": {"property": "mail", "trait": "email"}},
        ]},
        {"when": {"type": "identify"}, "rules": [{"drop": "traits.password"}]},
    ]})  # fmt: skip
    topic = topic_factory(partitions=1)
    calls = [
        segment("identify", 1, userId="u1", traits={"firstName": "Ann", "password": "hunter2"}),
        segment(
            "track",
            2,
            userId="u1",
            event="Order Completed",
            properties={
                "total": 30.0,
                "cvv": "123",
                "sku": "A-1",
                "card": "4111",
                "plan": "g",
                "mail": "ann@example.com",
            },
        ),  # fmt: skip
        segment("track", 3, userId="u1", event="Signed Up"),
        segment("track", 4, userId="u1", event="Debug Ping"),
        segment("page", 5, userId="u1", name="Pricing", properties={"path": "/pricing"}),
    ]
    not_defined, disabled = filtered("track", "not_defined"), filtered("track", "disabled")
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())

    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(
            kafka_bootstrap, topic, sandbox.url,
            event_definitions_file=defs, transformations_file=rules, page_event_name="Page View",
        )  # fmt: skip

        async def done() -> bool:
            events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
            profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
            return (
                len(events) == 2
                and len(profiles) == 1
                and filtered("track", "not_defined") == not_defined + 1
                and filtered("track", "disabled") == disabled + 1
            )

        async with running_service(settings) as service:
            await wait_until(done, timeout=120, what="2 events, 1 profile, 2 filtered")
        events = {e["metric"]: e for e in (await sandbox_get(sandbox.url, "/sandbox/events"))[
            "events"]}  # fmt: skip
        [profile] = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]

    assert service.result.dead_lettered == 0
    assert set(events) == {"Placed Order", "Page View"}
    assert events["Placed Order"]["properties"] == {
        "revenue": 30.0,
        "source": "kafka",
        "sku": "A-1",
        "product_id": "A-1",
        "card": hashlib.sha256(b"4111").hexdigest(),
        "plan": "Gold",
    }
    assert events["Placed Order"]["value"] == 30.0
    # the moved trait identified the person: the event is on the profile with that email
    assert profile["attributes"]["email"] == "ann@example.com"
    assert profile["attributes"]["first_name"] == "Ann"
    assert "password" not in profile["properties"]
    assert events["Placed Order"]["profile_id"] == profile["id"]
    assert events["Page View"]["properties"] == {"path": "/pricing"}


async def test_client_mode_uses_public_key_endpoints_and_page_calls_can_be_ignored(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = topic_factory(partitions=1)
    calls = [segment("identify", 0, userId="c1", traits={"email": "c1@example.com"})]
    calls += [
        segment("track", n, userId="c1", event="Viewed Item", properties={"n": n})
        for n in range(1, 4)
    ]
    calls += [segment("track", 9, userId="c2", event="Viewed Item", properties={"n": 9})]
    calls += [segment("page", 10, userId="c1", name="Home")]
    page_disabled = filtered("page", "page_disabled")
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())

    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(
            kafka_bootstrap, topic, sandbox.url,
            klaviyo_mode="client", klaviyo_public_key="SBXPUB", page_event_name="",
            batch_linger_ms=500,
        )  # fmt: skip

        async def done() -> bool:
            events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
            return len(events) == 4 and filtered("page", "page_disabled") == page_disabled + 1

        async with running_service(settings) as service:
            await wait_until(done, timeout=120, what="4 client-side events, 1 page ignored")
        requests = (await sandbox_get(sandbox.url, "/sandbox/requests"))["requests"]
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]

    assert service.result.dead_lettered == 0
    assert requests and all(r["path"].startswith("/client/") for r in requests)
    assert all(r["query"] == {"company_id": "SBXPUB"} for r in requests)
    assert all(r["status"] == 202 for r in requests)
    assert "/client/profiles" in {r["path"] for r in requests}
    assert {r["path"] for r in requests} <= {
        "/client/profiles", "/client/events", "/client/event-bulk-create"
    }  # fmt: skip
    assert sorted(e["unique_id"] for e in events) == [f"track-{n}" for n in (1, 2, 3, 9)]
    assert {e["metric"] for e in events} == {"Viewed Item"}
    by_external = {p["attributes"].get("external_id"): p for p in profiles}
    assert by_external["c1"]["attributes"]["email"] == "c1@example.com"
