"""A compacted product topic becomes Klaviyo's catalog, through the real broker and the sandbox:
the latest version of each resource wins, a tombstone deletes, a refused create or update
recovers, and a SIGKILL while jobs are in progress loses and doubles nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
from confluent_kafka import Producer

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish
from tests.support import running_service, sandbox_get, service_settings, wait_until
from tests.support.catalog import (
    PREFIX,
    catalog,
    item,
    jobs,
    latest,
    mismatches,
    publish_catalog,
    submit,
)
from tests.support.harness import (
    ServiceProcess,
    committed_lag,
    create_topic,
    service_env,
    state_dir,
    topic_size,
)

SCALE = 0.1  # the sandbox's and the governor's time scale: jobs take 0.1 s
SANDBOX = SandboxConfig(time_scale=SCALE, catalog_job_seconds=1.0,
                        catalog_job_seconds_per_resource=0.0)  # fmt: skip


def items(*ids: str, **fields: Any) -> list[dict[str, Any]]:
    return [{"type": "catalog_item", "id": i, "title": f"{i} title", "url": f"https://s.io/{i}",
             **fields} for i in ids]  # fmt: skip


def topics(kafka_bootstrap: str, topic_factory: Any) -> tuple[str, str]:
    """(events topic, compacted catalog topic)."""
    events = topic_factory(partitions=1)
    compacted = {"cleanup.policy": "compact"}
    products = create_topic(kafka_bootstrap, f"{events}-products", 2, **compacted)
    return events, products


def settings_for(kafka_bootstrap: str, events: str, products: str, url: str) -> Any:
    return service_settings(
        kafka_bootstrap, events, url, catalog_topics=(products,), catalog_linger_ms=100,
        klaviyo_rate_time_scale=SCALE,
    )  # fmt: skip


async def settled(
    http: aiohttp.ClientSession, url: str, bootstrap: str, group: str, topic: str,
    expected: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Wait until the sandbox's catalog equals `expected` and the topic is committed."""
    snapshot: dict[str, Any] = {}

    async def equal() -> bool:
        snapshot.update(await catalog(http, url))
        if mismatches(snapshot, expected):
            return False
        return committed_lag(bootstrap, group, topic) == 0

    try:
        await wait_until(equal, timeout=60, what="the catalog to equal the topic", poll=0.1)
    except AssertionError:
        raise AssertionError(mismatches(snapshot, expected)) from None
    return snapshot


async def test_the_catalog_ends_equal_to_the_topics_latest_values(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    events, products = topics(kafka_bootstrap, topic_factory)
    first = [
        {"type": "catalog_category", "id": "C1", "name": "Shirts"},
        *items("A", price=10.0),
        *items("B"),
        *items("D", categories=["C1"]),
        {"type": "catalog_variant", "id": "V1", "item_id": "A", "sku": "A-M", "title": "A M",
         "url": "https://s.io/A?m", "price": 10.0, "inventory_quantity": 0},  # fmt: skip
    ]
    then = [
        *items("A", price=11.0),
        *items("A", price=12.0, title="A renamed"),
        *items("A", price=13.0, title="A final", published=False),
        {**first[-1], "inventory_quantity": 5},  # back in stock
        {"type": "catalog_category", "id": "C2", "name": "Hats"},
        {"type": "catalog_item", "id": "B", "deleted": True},
    ]
    group = f"group-{events}"
    async with SandboxServer(SANDBOX) as sandbox, aiohttp.ClientSession() as http:
        settings = settings_for(kafka_bootstrap, events, products, sandbox.url)
        async with running_service(settings):
            publish_catalog(kafka_bootstrap, products, first)
            await settled(http, sandbox.url, kafka_bootstrap, group, products, latest(first))
            before = len(await jobs(http, sandbox.url))
            publish_catalog(kafka_bootstrap, products, then)
            snapshot = await settled(
                http, sandbox.url, kafka_bootstrap, group, products, latest(first + then)
            )
        later = (await jobs(http, sandbox.url))[before:]
    named_a = [j for j in later if PREFIX + "A" in j["requested"]]
    assert [(j["kind"], j["action"]) for j in named_a] == [("item", "update")], named_a
    variant = snapshot["variants"][0]
    assert variant["inventory_quantity"] == 5, "the update carries what back-in-stock reads"
    assert all(j["failed"] == 0 for j in later), later
    assert topic_size(kafka_bootstrap, f"{events}-dlq") == 0


async def test_a_refused_create_or_update_ends_as_the_topic_says(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """Someone else made item X (our create is refused: it exists); someone else deleted item
    Y after we made it (our update is refused: it does not): both end as the topic says."""
    events, products = topics(kafka_bootstrap, topic_factory)
    group = f"group-{events}"
    async with SandboxServer(SANDBOX) as sandbox, aiohttp.ClientSession() as http:
        status, _, _ = await submit(http, sandbox.url, "item", "create", item("X", title="theirs"))
        assert status == 202
        settings = settings_for(kafka_bootstrap, events, products, sandbox.url)
        async with running_service(settings):
            first = items("X", "Y")
            publish_catalog(kafka_bootstrap, products, first)
            await settled(http, sandbox.url, kafka_bootstrap, group, products, latest(first))
            status, _, _ = await submit(
                http, sandbox.url, "item", "delete", {"type": "catalog-item", "id": PREFIX + "Y"}
            )
            assert status == 202

            async def deleted() -> bool:
                held = (await catalog(http, sandbox.url))["items"]
                return PREFIX + "Y" not in {i["id"] for i in held}

            await wait_until(deleted, timeout=10, what="Y deleted behind our back", poll=0.05)
            then = items("Y", title="Y again")
            publish_catalog(kafka_bootstrap, products, then)
            await settled(
                http, sandbox.url, kafka_bootstrap, group, products, latest(first + then)
            )
        history = await jobs(http, sandbox.url)
    refused = [j for j in history if j["failed"]]
    assert {(j["action"], tuple(j["errors"])[0][:20]) for j in refused} >= {
        ("create", "Catalog item $custom")
    }, refused
    assert any(j["action"] == "update" and j["failed"] for j in history), "Y's update refused"
    assert topic_size(kafka_bootstrap, f"{events}-dlq") == 0



async def test_a_sigkill_while_jobs_are_in_progress_loses_and_doubles_nothing(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """Killed with jobs in progress, restarted at once: the restart follows the stored jobs
    (polls their ids) instead of guessing, and the catalog ends equal to the topic."""
    events, products = topics(kafka_bootstrap, topic_factory)
    lines = [*items(*(f"P{i}" for i in range(1200)), price=1.0),
             *items(*(f"P{i}" for i in range(0, 1200, 3)), price=2.0)]  # fmt: skip
    publish_catalog(kafka_bootstrap, products, lines)
    slow = SandboxConfig(time_scale=SCALE, catalog_job_seconds=8.0,
                         catalog_job_seconds_per_resource=0.0)  # fmt: skip: 0.8 s a job
    async with SandboxServer(slow) as sandbox, aiohttp.ClientSession() as http:
        env = service_env(
            kafka_bootstrap, events, sandbox.url, state_dir(), catalog_topics=products,
            catalog_linger_ms=100, klaviyo_rate_time_scale=SCALE,
            kafka_group_instance_id="catalog-crash",  # the restart takes its partitions back
        )  # fmt: skip
        service = ServiceProcess(env, tmp_path / "service.log")
        try:
            service.start()

            async def in_progress() -> bool:
                assert service.alive, service.log()[-3000:]
                done = [j for j in await jobs(http, sandbox.url) if j["status"] == "complete"]
                return len(done) >= 3 and (await catalog(http, sandbox.url))["in_progress"] >= 3

            await wait_until(in_progress, timeout=60, what="jobs in progress", poll=0.05)
            service.kill()
            open_jobs = [j["id"] for j in await jobs(http, sandbox.url)
                         if j["status"] != "complete"]  # fmt: skip
            seen = (await sandbox_get(sandbox.url, "/sandbox/requests"))["last_seq"]
            service.start()
            await settled(http, sandbox.url, kafka_bootstrap, f"group-{events}", products,
                          latest(lines))  # fmt: skip
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        after = (await sandbox_get(sandbox.url, f"/sandbox/requests?since={seen}"))["requests"]
    polled = {r["path"].rsplit("/", 1)[-1] for r in after if r["method"] == "GET"}
    assert open_jobs and polled & set(open_jobs), "the restart followed the stored jobs"
    assert topic_size(kafka_bootstrap, f"{events}-dlq") == 0


def change(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> bytes:
    """A Debezium change event as the JSON converter writes it (schemas enabled)."""
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1,
               "source": {"connector": "postgresql", "table": "products"}}  # fmt: skip
    return orjson.dumps({"schema": {"type": "struct"}, "payload": payload})


async def test_debezium_change_events_of_a_products_table_through_the_column_mapping(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    events = topic_factory(partitions=1)
    table = create_topic(kafka_bootstrap, f"{events}.public.products", 1)
    mapping = tmp_path / "catalog.yaml"
    mapping.write_text(
        f"topics:\n  {table}:\n    kind: item\n    id: product_id\n    fields:\n"
        "      title: name\n      url: 'https://shop.example/p/{handle}'\n"
        "      price: price\n      published: active\n      categories: category_ids\n"
    )
    row = {"product_id": 7, "name": "Mug", "handle": "mug", "price": "9.50", "active": 1,
           "category_ids": None}  # fmt: skip
    other = {**row, "product_id": 8, "name": "Cup", "handle": "cup"}
    key7, key8 = orjson.dumps({"product_id": 7}), orjson.dumps({"product_id": 8})
    records = [
        (key7, change("r", None, row)),  # the snapshot
        (key8, change("c", None, other)),  # an insert
        (key7, change("u", row, {**row, "name": "Big mug", "price": "12.00", "active": 0})),
        (key8, change("d", other, None)),  # a delete, then its tombstone
        (key8, None),
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for key, value in records:
        producer.produce(table, value, key)
    assert producer.flush(30) == 0
    async with SandboxServer(SANDBOX) as sandbox, aiohttp.ClientSession() as http:
        settings = settings_for(kafka_bootstrap, events, table, sandbox.url)
        settings = settings.model_copy(update={"catalog_mapping_file": str(mapping)})
        async with running_service(settings):
            expected = {
                "item:7": {"title": "Big mug", "url": "https://shop.example/p/mug",
                           "price": 12.0, "published": False},
                "item:8": None,
            }  # fmt: skip
            await settled(http, sandbox.url, kafka_bootstrap, f"group-{events}", table, expected)
        history = await jobs(http, sandbox.url)
    # 8's insert and delete met in one batch window: only the delete went, for an item Klaviyo
    # never had (refused: not found), which counts as done
    refused = [(j["action"], j["requested"]) for j in history if j["failed"]]
    assert refused == [("delete", [PREFIX + "8"])], history
    assert topic_size(kafka_bootstrap, f"{events}-dlq") == 0


async def test_catalog_work_neither_exceeds_its_job_share_nor_holds_events_back(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """Klaviyo holds every catalog request (a slow Klaviyo): the events behind a small
    MAX_PENDING_RECORDS still all arrive; once it answers, at most the job share is ever in
    progress (2 jobs × share 1/2 = 1 here), never refused over the cap."""
    events, products = topics(kafka_bootstrap, topic_factory)
    calls = [{"type": "track", "messageId": f"e-{i}", "timestamp": "2026-03-01T10:00:00Z",
              "userId": f"u-{i % 7}", "event": "Viewed", "properties": {"i": i}}
             for i in range(300)]  # fmt: skip
    publish_catalog(kafka_bootstrap, products, items(*(f"H{i}" for i in range(500))))
    async with SandboxServer(SANDBOX) as sandbox, aiohttp.ClientSession() as http:
        held = ["bulk_create_catalog_items"]
        async with http.post(f"{sandbox.url}/sandbox/faults",
                             json={"hold": True, "operations": held}) as resp:  # fmt: skip
            assert resp.status == 200
        settings = settings_for(kafka_bootstrap, events, products, sandbox.url).model_copy(
            update={"max_pending_records": 100, "catalog_max_jobs_in_progress": 2,
                    "klaviyo_rate_share": 0.5}
        )  # fmt: skip
        async with running_service(settings):
            publish({"bootstrap.servers": kafka_bootstrap}, events, calls, Encoder())

            async def delivered() -> bool:
                return len((await sandbox_get(sandbox.url, "/sandbox/events"))["events"]) == 300

            await wait_until(delivered, timeout=60, what="every event past the held catalog")
            assert (await catalog(http, sandbox.url))["items"] == [], "the catalog was held"
            async with http.post(f"{sandbox.url}/sandbox/faults", json={"hold": False}):
                pass
            await settled(http, sandbox.url, kafka_bootstrap, f"group-{events}", products,
                          latest(items(*(f"H{i}" for i in range(500)))))  # fmt: skip
        snapshot = await catalog(http, sandbox.url)
    assert snapshot["most_in_progress"] == 1 and snapshot["refused_over_cap"] == 0
