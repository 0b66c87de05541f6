"""A real Prometheus, configured by our monitoring/prometheus.yml, scrapes the real service.

`python -m stream run` (the production entry point, its own metrics registry) consumes a real
topic on the real broker and delivers to the Klaviyo sandbox. The records are chosen so every
family has data: sample identify/track/page calls (pages are switched off, so they are
filtered), exact duplicates, undecodable records, anonymous tracks held until an identify names
them, and a sandbox failing every request until both a 429 and a 5xx were answered; and a
compacted product topic (items, a variant, a category, a tombstone, an item someone else made,
so our create is refused and recovered, and an item Klaviyo refuses outright). Then the
series Prometheus stored must say exactly what was published, and every dashboard and alert
expression must evaluate without error and (except the reviewed few below) return data.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Producer

from stream.core.settings import SANDBOX_API_KEY
from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import free_port, wait_until
from tests.support.catalog import catalog, item, latest, mismatches, publish_catalog, submit
from tests.support.harness import (
    ServiceProcess,
    assert_exactly_once,
    create_topic,
    service_env,
    state_dir,
    stats,
    topic_size,
)
from tests.support.prometheus import (
    JOB,
    PrometheusHarness,
    alert_rules,
    dashboard_expressions,
    grafana_to_promql,
    needs_binary,
)

pytestmark = needs_binary("prometheus")

RECORDS = 3000
PERSONS = 150
DUPLICATES = 120
BAD = 25
ANONYMOUS = 20
CATALOG_ITEMS = 200  # one refused item among them stays under the catalog dead-letter alert's 1 %

# Alert expressions that return nothing on a healthy, fed replica even in the `bool` form
# below (reviewed; each with the reason). Every dashboard expression must return data.
ALLOWED_EMPTY_ALERTS = {
    # absent() yields a series only when no replica is up; ours is up.
    "KlaviyoStreamNoConsumers": "absent(...) is empty while a replica is up",
}
ALLOWED_EMPTY_DASHBOARD: dict[str, str] = {}

_THRESHOLD = re.compile(r"(==|!=|>=|<=|>|<)\s*(?=[0-9.])")


def as_bool(expr: str) -> str:
    """`x > 0.05` → `x > bool 0.05`: every compared series is returned (0 or 1) instead of
    filtered, so an empty answer means a missing series or a join that matches nothing."""
    return _THRESHOLD.sub(lambda m: f"{m.group(1)} bool ", expr)


def anonymous_persons(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tracks that name only an anonymousId, and the identifies that later name each person."""
    tracks, identifies = [], []
    for i in range(count):
        anonymous_id = str(uuid.uuid4())
        base = {"timestamp": "2026-01-02T03:04:05+00:00", "anonymousId": anonymous_id}
        tracks.append(
            {
                **base,
                "type": "track",
                "messageId": str(uuid.uuid4()),
                "event": "Viewed Product",
                "properties": {"sku": f"SKU-{i}"},
            }
        )
        identifies.append(
            {
                **base,
                "type": "identify",
                "messageId": str(uuid.uuid4()),
                "userId": f"anon-{i}",
                "traits": {"email": f"anon.{i}@example.com", "firstName": "Anon"},
            }
        )
    return tracks, identifies


def catalog_lines() -> list[dict[str, Any]]:
    """Catalog records of every kind: a category, items (one in the category), a variant, a
    tombstone, an item someone else already made (THEIRS) and one Klaviyo refuses (REFUSED)."""
    ids = [f"P-{i}" for i in range(CATALOG_ITEMS)] + ["THEIRS", "REFUSED"]
    lines: list[dict[str, Any]] = [{"type": "catalog_category", "id": "C1", "name": "Shirts"}]
    lines += [{"type": "catalog_item", "id": i, "title": f"{i} title", "url": f"https://s.io/{i}"}
              for i in ids]  # fmt: skip
    lines[1]["categories"] = ["C1"]
    lines.append({"type": "catalog_variant", "id": "V1", "item_id": "P-0", "sku": "P-0-M",
                  "title": "P-0 M", "url": "https://s.io/P-0?m", "price": 10.0,
                  "inventory_quantity": 0})  # fmt: skip
    lines.append({"type": "catalog_item", "id": "P-1", "deleted": True})
    return lines


def publish_garbage(bootstrap: str, topic: str, count: int) -> None:
    """Records no decoder can read: each must become one dead letter."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(topic, value=f"not avro {i}".encode(), key=f"bad-{i}".encode())
    assert producer.flush(30) == 0


def value(samples: list[Any]) -> float:
    """The one value of a single-sample answer."""
    assert len(samples) == 1, samples
    return float(samples[0]["value"][1])


@pytest.mark.slow
async def test_prometheus_scrapes_the_running_service_and_every_expression_has_data(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=3)
    compacted = {"cleanup.policy": "compact"}
    products = create_topic(kafka_bootstrap, f"{topic}-products", 1, **compacted)
    calls = list(sample_calls(RECORDS, seed=31, persons=PERSONS))
    tracks = [c for c in calls if c["type"] == "track"]
    pages = sum(c["type"] == "page" for c in calls)
    duplicates = tracks[:: len(tracks) // DUPLICATES][:DUPLICATES]
    held_tracks, namers = anonymous_persons(ANONYMOUS)
    published = len(calls) + len(duplicates) + BAD + 2 * ANONYMOUS
    producer = {"bootstrap.servers": kafka_bootstrap}
    port = free_port()
    instance = f"127.0.0.1:{port}"

    with SandboxThread(SandboxConfig(fault_seed=9)) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), metrics_port=port,
            page_event_name="", catalog_topics=products, catalog_linger_ms=100,
        )  # fmt: skip
        service = ServiceProcess(env, tmp_path / "service.log")
        prometheus = PrometheusHarness([instance])
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            service.start()
            await asyncio.to_thread(prometheus.start)

            async def query(expr: str) -> list[Any]:
                assert service.alive, service.log()[-3000:]
                return await asyncio.to_thread(prometheus.query, expr)

            async def holds(expr: str, what: str, timeout: float = 120) -> None:
                async def check() -> bool:
                    return bool(await query(expr))

                await wait_until(check, timeout=timeout, what=what)

            async def ready() -> bool:
                try:
                    async with http.get(f"http://{instance}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(ready, timeout=60, what="/readyz 200 (partitions assigned)")
            await holds(f'up{{job="{JOB}", instance="{instance}"}} == 1', "a successful scrape")

            # 0. the catalog: one create refused and recovered, one resource dead-lettered
            status, body, _ = await submit(
                http, sandbox.url, "item", "create", item("THEIRS", title="theirs")
            )
            assert status == 202, body

            async def theirs_made() -> bool:
                made = (await catalog(http, sandbox.url))["items"]
                return any(i["id"].endswith(":THEIRS") for i in made)

            await wait_until(theirs_made, timeout=30, what="someone else's item made")
            refuse = {"fail": [{"id": "REFUSED", "detail": "price: must be positive"}]}
            async with http.post(f"{sandbox.url}/sandbox/catalog/faults", json=refuse) as resp:
                assert resp.status == 200, await resp.text()
            lines = catalog_lines()
            await asyncio.to_thread(publish_catalog, kafka_bootstrap, products, lines)
            expected_catalog = {k: v for k, v in latest(lines).items() if k != "item:REFUSED"}

            async def catalog_equal() -> bool:
                return not mismatches(await catalog(http, sandbox.url), expected_catalog)

            await wait_until(catalog_equal, timeout=120, what="the catalog equal to the topic")
            dead_lettered = 'klaviyo_stream_catalog_resources_total{outcome="dead_lettered"}'
            await holds(f"sum({dead_lettered}) == 1", "the refused item dead-lettered")
            await holds("sum(klaviyo_stream_catalog_recovered_total) == 1", "one recovery")
            await holds("klaviyo_stream_catalog_pending_records == 0", "no catalog record waits")
            await holds("klaviyo_stream_catalog_jobs_in_progress == 0", "no catalog job open")

            # 1. anonymous tracks: held, nothing sent yet
            publish(producer, topic, held_tracks, Encoder())
            await holds(f"klaviyo_stream_records_held_total == {ANONYMOUS}", "held records")

            # 2. every request fails until Klaviyo answered both a 429 and a 5xx
            await http.post(f"{sandbox.url}/sandbox/faults", json={"fault_rate": 1.0})
            publish(producer, topic, calls + duplicates + namers, Encoder())
            await asyncio.to_thread(publish_garbage, kafka_bootstrap, topic, BAD)
            published_at = time.time()

            async def throttled_and_failed() -> bool:
                faults = (await stats(sandbox.url))["faults"]
                return "429" in faults and bool({"500", "503"} & set(faults))

            await wait_until(throttled_and_failed, timeout=60, what="a 429 and a 5xx")
            await http.post(f"{sandbox.url}/sandbox/faults", json={"fault_rate": 0.0})

            # 3. everything delivered, consumed, committed, and scraped after that
            async def delivered() -> bool:
                assert service.alive, service.log()[-3000:]
                return int((await stats(sandbox.url))["events"]) >= len(tracks) + ANONYMOUS

            await wait_until(delivered, timeout=300, what="every event at the sandbox")
            topic_filter = f'{{job="{JOB}", topic="{topic}"}}'
            await holds(
                f"sum(klaviyo_stream_records_consumed_total{topic_filter}) == {published}",
                "every record consumed",
            )
            await holds(f"count(klaviyo_stream_consumer_lag_records{topic_filter}) == 3", "lag")
            await holds(f"sum(klaviyo_stream_consumer_lag_records{topic_filter}) == 0", "lag 0")
            # rate/deriv expressions need two samples of a series in their window: the lag gauge
            # is published every 5 s, so on a busy machine it may be younger than that
            lag_samples = f"count_over_time(klaviyo_stream_consumer_lag_records{topic_filter}[10m])"
            await holds(f"min({lag_samples}) >= 2", "two lag samples")
            await holds("klaviyo_stream_pending_records == 0", "nothing pending")
            await holds(
                f"klaviyo_stream_last_commit_timestamp_seconds >= {published_at}",
                "a commit after the records were published",
            )
            await holds("count(klaviyo_stream_state_store_keys) > 0", "state-store sizes")

            # 4. the series say exactly what happened
            assert value(await query("sum(klaviyo_stream_dead_letters_total)")) == BAD + 1
            catalog_dead = 'sum(klaviyo_stream_dead_letters_total{stage="catalog"})'
            assert value(await query(catalog_dead)) == 1
            assert (
                value(await query('sum(klaviyo_stream_dead_letters_total{stage="decode"})')) == BAD
            )
            assert value(await query("klaviyo_stream_records_deduplicated_total")) == DUPLICATES
            assert (
                value(
                    await query(
                        'sum(klaviyo_stream_records_filtered_total{reason="page_disabled"})'
                    )
                )
                == pages
            )
            assert value(await query("sum(klaviyo_stream_records_decoded_total)")) == (
                published - BAD
            )
            assert (
                value(await query('klaviyo_stream_records_released_total{outcome="identified"}'))
                == ANONYMOUS
            )
            sent = value(await query("sum(klaviyo_stream_records_sent_total)"))
            assert sent >= len(tracks) + ANONYMOUS, "every event was accepted at least once"
            ok = value(await query('sum(klaviyo_stream_requests_total{status_class="2xx"})'))
            failed = value(
                await query('sum(klaviyo_stream_requests_total{status_class!="2xx"})')
            )
            assert ok > 0 and failed > 0
            assert value(await query("sum(klaviyo_stream_rate_limited_total)")) >= 1
            assert value(await query("sum(klaviyo_stream_retries_total)")) >= failed - 1
            assert value(await query("sum(klaviyo_stream_governor_wait_seconds_total)")) > 0
            requests = value(await query("sum(klaviyo_stream_request_duration_seconds_count)"))
            assert requests == ok + failed
            assert value(await query("sum(klaviyo_stream_batch_size_records_sum)")) >= sent
            kinds = {
                s["metric"]["kind"] for s in await query("klaviyo_stream_identity_links_total")
            }
            assert {"email", "external_id", "anonymous_id"} <= kinds
            assigned = value(await query("klaviyo_stream_assigned_partitions"))
            assert assigned == 3 + 1, "the events' three partitions and the product topic's one"
            assert value(await query("klaviyo_stream_in_flight_requests")) == 0
            assert value(await query("klaviyo_stream_profile_merges_total")) == 0
            assert value(await query(f"sum({dead_lettered})")) == 1
            recovered = 'klaviyo_stream_catalog_recovered_total{type="item", refused="create"}'
            assert value(await query(recovered)) == 1
            finished = value(await query("sum(klaviyo_stream_catalog_resources_total)"))
            assert finished == len(lines), "every catalog version finished once"
            jobs_seen = "sum(klaviyo_stream_catalog_job_duration_seconds_count)"
            assert value(await query(jobs_seen)) >= 3, "category, item and variant jobs"

            # 5. every shipped expression runs; the ones expected to have data have it
            errors: dict[str, str] = {}
            empty: list[str] = []
            for expr in dashboard_expressions():
                promql = grafana_to_promql(expr)
                try:
                    samples = await query(promql)
                except Exception as exc:  # collect them all, report at once
                    errors[expr] = str(exc)
                    continue
                if not samples and expr not in ALLOWED_EMPTY_DASHBOARD:
                    empty.append(expr)
                for sample in samples:
                    number = float(sample["value"][1])
                    assert math.isnan(number) or number >= 0, (expr, sample)
            for rule in alert_rules():
                try:
                    await query(str(rule["expr"]))
                    samples = await query(as_bool(str(rule["expr"])))
                except Exception as exc:
                    errors[rule["alert"]] = str(exc)
                    continue
                if not samples and rule["alert"] not in ALLOWED_EMPTY_ALERTS:
                    empty.append(f"{rule['alert']}: {as_bool(str(rule['expr']))}")
            assert not errors, errors
            assert not empty, f"no data for: {empty}"

            # 6. the rule manager evaluates every alert healthily; none fires on this replica
            rules = await asyncio.to_thread(prometheus.rules)
            assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
            unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
            assert not unhealthy, unhealthy
            assert not [r["name"] for r in rules if r.get("state") == "firing"]

            assert service.terminate() == 0, service.log()[-3000:]
        finally:
            service.stop_quietly()
            await http.close()
            await asyncio.to_thread(prometheus.stop)

        expected = [c for c in calls if c["type"] != "page"] + held_tracks + namers  # no pages
        # faults were on for a while: a request applied whose answer was lost is refused later
        await assert_exactly_once(sandbox.url, expected, replays_allowed=True)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == BAD + 1

    # 7. the logs: one JSON object per line with the stable keys, never the API key
    log_lines = [ln for ln in service.log().splitlines() if ln.startswith("{")]
    assert log_lines
    for line in log_lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), line
    assert SANDBOX_API_KEY not in service.log()
