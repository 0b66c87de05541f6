"""The demo's traffic (`run --local --sample N`): each thing the product does reaches the
sandbox's pages, so a newcomer sees orders, consent, an opt-out, lists, a merge and a deletion."""

from __future__ import annotations

from collections import Counter
from typing import Any

from stream.local.demo import LISTS, NEWSLETTER, SPLIT_EMAIL, SPLIT_USER, VIP, demo_calls
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import running_service, sandbox_get, service_settings, wait_until
from tests.support.harness import committed_lag, stats, topic_size


def options(call: dict[str, Any]) -> dict[str, Any]:
    return dict(call.get("integrations", {}).get("Klaviyo", {}))


def test_the_demo_tells_every_story_whatever_its_size() -> None:
    for count in (12, 300, 2000):
        demo = demo_calls(count)
        assert demo.count == max(count, 10), count
        calls = demo.first + demo.later
        encoder = Encoder()
        for call in calls:
            encoder.encode(call)  # each is a call `produce` and the service accept
        orders = [c for c in calls if c.get("event") == "Order Completed"]
        assert any(len(o["properties"]["products"]) > 1 for o in orders)
        asked = [options(c) for c in calls]
        assert any(a.get("subscribe", {}).get("list_id") == NEWSLETTER.id for a in asked)
        assert any(a.get("subscribe", {}).get("sms") for a in asked)
        assert any("unsubscribe" in a for a in asked)
        assert any(VIP.id in a.get("lists", {}).get("add", []) for a in asked)
        # the split person: two halves first, the login naming both later
        assert not any(c.get("userId") == SPLIT_USER and "email" in c.get("traits", {})
                       for c in demo.first)
        assert [c["type"] for c in demo.later] == ["identify", "delete"]
        assert demo.later[0]["traits"]["email"] == SPLIT_EMAIL
    assert demo_calls(300) == demo_calls(300)  # deterministic for a seed


async def test_the_demo_shows_each_feature_in_the_sandbox(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    from stream.local.demo import publish_demo

    topic = topic_factory(partitions=3)  # as the local broker's topics
    dlq = topic_factory(partitions=1, prefix=f"{topic}-dlq")
    demo = demo_calls(240)
    with SandboxThread(SandboxConfig(lists=LISTS)) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url, dlq_topic=dlq)

        def send(calls: list[dict[str, Any]]) -> int:
            return publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())

        said: list[str] = []
        async with running_service(settings):
            await publish_demo(demo, sandbox.url, send, say=said.append, poll=0.1)

            async def finished() -> bool:
                now = await stats(sandbox.url)
                return (now["deleted_profiles"] == 1 and now["merges"] == 1
                        and committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0)

            await wait_until(finished, timeout=120, what="the demo's merge and deletion")
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
        lists = (await sandbox_get(sandbox.url, "/sandbox/lists"))["lists"]
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
        deleted = (await sandbox_get(sandbox.url, "/sandbox/deleted"))["deleted"]
    assert said[0] == f"published {len(demo.first)} sample calls"
    assert topic_size(kafka_bootstrap, dlq) == 0
    # one profile per person: the split person merged into one, the forgotten one gone
    people = {c["userId"] for c in demo.first if c["type"] == "identify" and "userId" in c}
    assert len(profiles) == len(people) - 1  # the web signup named no userId; one forgotten
    [grace] = [p for p in profiles if p["attributes"]["external_id"] == SPLIT_USER]
    assert grace["attributes"]["email"] == SPLIT_EMAIL and NEWSLETTER.id in grace["lists"]
    forgotten = demo.later[1]
    assert [d["identifiers"]["external_id"] for d in deleted] == [forgotten["userId"]]
    assert forgotten["userId"] not in {p["attributes"]["external_id"] for p in profiles}
    # consent per channel, an opt-out among them
    email = Counter(p["consent"]["email.marketing"]["state"] for p in profiles)
    sms = Counter(p["consent"]["sms.marketing"]["state"] for p in profiles)
    assert email["subscribed"] and email["unsubscribed"] and sms["subscribed"], (email, sms)
    members = {m["id"]: m["members"] for m in lists}
    assert members[NEWSLETTER.id] and members[VIP.id]
    # orders: a Placed Order and one Ordered Product per line
    metrics = Counter(e["metric"] for e in events)
    assert metrics["Placed Order"] and metrics["Ordered Product"] > metrics["Placed Order"]
    assert {"Viewed Product", "Added to Cart", "Started Checkout"} <= set(metrics)
