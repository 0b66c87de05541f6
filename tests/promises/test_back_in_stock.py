"""Back in stock from a real client library's track call, through the real broker: one
subscription on the person's profile; a request naming a variant the catalog does not have is a
dead letter with Klaviyo's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
from segment.analytics import Client

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish_file
from tests.support import read_topic, running_service, service_settings, wait_until
from tests.support.catalog import PREFIX, catalog, publish_catalog
from tests.support.sdk import WHEN


async def test_a_back_in_stock_request_becomes_one_subscription_on_the_right_profile(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    events, products = topic_factory(partitions=1), topic_factory(partitions=1)
    client = Client(write_key="test-write-key", send=False)
    calls = []
    for message_id, method, kwargs in (
        ("who", client.identify, {"traits": {"email": "ada@example.com", "name": "Ada"}}),
        ("ask", client.track, {"event": "Back In Stock Requested",
                               "properties": {"variant": "MUG-L", "product": "Mug"}}),
        ("bad", client.track, {"event": "Notify Me", "integrations": {
            "Klaviyo": {"back_in_stock": {"variant": "NO-SUCH", "channels": ["EMAIL"]}}}}),
    ):  # fmt: skip
        ok, message = method(user_id="u-ada", message_id=message_id, timestamp=WHEN, **kwargs)
        assert ok
        calls.append(message)
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in calls))
    publish_catalog(kafka_bootstrap, products, [
        {"type": "catalog_item", "id": "MUG", "title": "Mug", "url": "https://s.io/mug"},
        {"type": "catalog_variant", "id": "MUG-L", "item_id": "MUG", "sku": "MUG-L",
         "title": "Mug L", "url": "https://s.io/mug?l", "price": 9.5, "inventory_quantity": 0},
    ])  # fmt: skip
    config = SandboxConfig(time_scale=0.1, catalog_job_seconds=1.0)
    async with SandboxServer(config) as sandbox, aiohttp.ClientSession() as http:
        settings = service_settings(
            kafka_bootstrap, events, sandbox.url, catalog_topics=(products,),
            catalog_linger_ms=100, klaviyo_rate_time_scale=0.1,
        )  # fmt: skip
        async with running_service(settings):

            async def variant_made() -> bool:
                return bool((await catalog(http, sandbox.url))["variants"])

            await wait_until(variant_made, timeout=30, what="the variant in the catalog")
            report = publish_file({"bootstrap.servers": kafka_bootstrap}, events, path, Encoder())
            assert report.published == 3

            async def subscribed() -> bool:
                return bool((await catalog(http, sandbox.url))["back_in_stock"])

            await wait_until(subscribed, timeout=30, what="the subscription")
            [dead] = read_topic(kafka_bootstrap, f"{events}-dlq", 1, timeout=30)
        snapshot = await catalog(http, sandbox.url)
        async with http.get(f"{sandbox.url}/sandbox/profiles") as resp:
            profiles = (await resp.json())["profiles"]
    [ada] = [p for p in profiles if p["attributes"]["email"] == "ada@example.com"]
    assert [(s["profile_id"], s["variant"], s["channels"]) for s in snapshot["back_in_stock"]] == [
        (ada["id"], PREFIX + "MUG-L", ["EMAIL"])
    ]
    headers = dict(dead.headers())
    assert headers["dlq.item"] == b"back in stock NO-SUCH"
    assert b"Catalog variant $custom:::$default:::NO-SUCH does not exist" in headers[
        "dlq.error.message"
    ]
