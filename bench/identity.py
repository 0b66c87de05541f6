"""Profile inflation and duplicates: our service beside a naive per-call mapping, same traffic.

The traffic is `stream.local.scenario` (anonymous browsing, signups, phones added later, app events
by userId only, alias calls, email variants, 10% duplicates, out-of-order identifies) with its
ground truth. Ours: published to a real broker and run through the service. Naive: every call
sent on its own identifiers, one request each, as a direct integration does (no identity graph,
no dedup; `unique_id` = messageId, its best case). Both land in their own Klaviyo sandbox.

    python bench/identity.py [--persons 400]

Prints, for each: Klaviyo profiles / real persons (inflation), events stored / true events,
requests that repeated an already-sent messageId, and events stored on a wrong profile.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from typing import Any

from common import Broker, machine, parser, settings
from pydantic import SecretStr

from stream.core.calls import normalize
from stream.core.errors import KlaviyoError, RecordError
from stream.core.identifiers import identifiers_of
from stream.core.settings import SANDBOX_API_KEY
from stream.engine.service import Service
from stream.klaviyo import mapping
from stream.klaviyo.client import EVENTS, PROFILE_IMPORT, KlaviyoClient
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.local.scenario import GroundTruth, Scenario, build_scenario
from stream.ops.produce import Encoder, publish, to_avro_record


async def _get(url: str, path: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url + path) as resp:
        return await resp.json()


def figures(
    truth: GroundTruth,
    profiles: list[dict[str, Any]],
    events: list[dict[str, Any]],
    sends: Counter[str],
) -> dict[str, float]:
    """Inflation, duplicates and misattribution against the ground truth."""
    owner = {p["id"]: p["attributes"].get("external_id") for p in profiles}
    wrong = sum(
        1
        for e in events
        if e["unique_id"] in truth.event_owner
        and owner.get(e["profile_id"]) != truth.event_owner[e["unique_id"]]
    )
    true_events = len(truth.event_owner)
    return {
        "profiles": len(profiles),
        "inflation": len(profiles) / len(truth.persons),
        "events": len(events),
        "events_ratio": len(events) / true_events,
        "repeat_sends": sum(n - 1 for n in sends.values() if n > 1),
        "wrong_profile": wrong,
    }


async def run_ours(scenario: Scenario, bootstrap: str, topic: str) -> dict[str, float]:
    """The service over the real broker into a fresh sandbox."""
    publish({"bootstrap.servers": bootstrap}, topic, scenario.calls, Encoder())
    truth = scenario.truth
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        with tempfile.TemporaryDirectory() as state:
            service = Service(settings(bootstrap, topic, sandbox.url, state, batch_linger_ms=50))
            task = asyncio.create_task(service.run())
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                stats = await _get(sandbox.url, "/sandbox/stats")
                if stats["events"] >= len(truth.event_owner) and service.result.consumed >= len(
                    scenario.calls
                ):
                    break
                await asyncio.sleep(0.2)
            service.stop()
            await task
        requests = (await _get(sandbox.url, "/sandbox/requests"))["requests"]
        profiles = (await _get(sandbox.url, "/sandbox/profiles"))["profiles"]
        events = (await _get(sandbox.url, "/sandbox/events"))["events"]
    return figures(truth, profiles, events, _sent_unique_ids(requests))


async def run_naive(scenario: Scenario) -> dict[str, float]:
    """Each call on its own identifiers, one request per call."""
    sends: Counter[str] = Counter()
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        client = KlaviyoClient(sandbox.url, SecretStr(SANDBOX_API_KEY), "2026-07-15")
        async with client:
            for raw in scenario.calls:
                call_type, record = to_avro_record(raw)
                try:
                    call = normalize(call_type, record)
                    ids = identifiers_of(call, "US")
                    if call.type == "identify" and ids.named:
                        body = mapping.profile_import_body(mapping.profile_attributes(call, ids))
                        await client.post(PROFILE_IMPORT, body)
                    elif call.type == "track":
                        event = mapping.event_attributes(call)
                        sends[call.message_id] += 1
                        profile = ids.as_attributes(anonymous=True)
                        await client.post(EVENTS, mapping.single_event_body(event, profile))
                except (RecordError, KlaviyoError):
                    continue  # a direct integration logs and moves on
        profiles = (await _get(sandbox.url, "/sandbox/profiles"))["profiles"]
        events = (await _get(sandbox.url, "/sandbox/events"))["events"]
    return figures(scenario.truth, profiles, events, sends)


def _sent_unique_ids(requests: list[dict[str, Any]]) -> Counter[str]:
    sent: Counter[str] = Counter()
    for request in requests:
        attributes = ((request.get("body") or {}).get("data") or {}).get("attributes") or {}
        if attributes.get("unique_id"):
            sent[attributes["unique_id"]] += 1
        for group in (attributes.get("events-bulk-create") or {}).get("data", []):
            for event in group["attributes"]["events"]["data"]:
                sent[event["attributes"]["unique_id"]] += 1
    return sent


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--persons", type=int, default=400)
    args = p.parse_args()
    scenario = build_scenario(persons=args.persons, seed=11)
    truth = scenario.truth
    print(f"machine: {machine()}")
    print(
        f"traffic: {len(scenario.calls)} calls, {len(truth.persons)} identified persons, "
        f"{truth.anonymous_persons} never-identified visitors, {truth.duplicates} duplicates, "
        f"{len(truth.event_owner)} true events"
    )
    with Broker(args.bootstrap) as broker:
        ours = asyncio.run(run_ours(scenario, broker.bootstrap, broker.topic("bench-identity", 6)))
    naive = asyncio.run(run_naive(scenario))
    print(f"{'':26}{'ours':>10}{'naive':>10}")
    for key, label in [
        ("profiles", "Klaviyo profiles"),
        ("inflation", "profiles / persons"),
        ("events", "events stored"),
        ("events_ratio", "events / true events"),
        ("repeat_sends", "repeated messageId sends"),
        ("wrong_profile", "events on wrong profile"),
    ]:
        spec = ".3f" if key.endswith(("inflation", "ratio")) else ".0f"
        print(f"{label:26}{ours[key]:>10{spec}}{naive[key]:>10{spec}}")


if __name__ == "__main__":
    main()
