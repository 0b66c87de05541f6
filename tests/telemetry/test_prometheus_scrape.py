"""A real Prometheus scrapes the observer and evaluates every shipped PromQL expression.

This proves what promtool cannot: the exposition format is accepted by the server, the series
the dashboard and alerts name are really there under those names, and every expression runs
without error against real data. The same against the running service, with records
flowing: test_prometheus_service.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from stream.telemetry import metrics
from stream.telemetry.health import Health
from stream.telemetry.observe import ObserverHandle, start_observer
from tests.support import wait_until
from tests.support.prometheus import (
    JOB,
    PrometheusHarness,
    alert_expressions,
    alert_rules,
    dashboard_expressions,
    grafana_to_promql,
    needs_binary,
)

pytestmark = needs_binary("prometheus")


def set_sample_values() -> None:
    """Give every metric family at least one series, so each expression has data to chew."""
    metrics.RECORDS_CONSUMED.labels("analytics", "0").inc(100)
    metrics.RECORDS_DECODED.labels("track").inc(90)
    metrics.RECORDS_FILTERED.labels("page", "disabled").inc(2)
    metrics.RECORDS_DEDUPLICATED.inc(3)
    metrics.RECORDS_HELD.inc(4)
    metrics.RECORDS_RELEASED.labels("sent").inc(3)
    metrics.IDENTITY_LINKS.labels("email").inc(5)
    metrics.PROFILE_MERGES.inc()
    metrics.REQUESTS.labels("event-bulk-create-jobs", "2xx").inc(2)
    metrics.REQUESTS.labels("event-bulk-create-jobs", "4xx").inc()
    metrics.RECORDS_SENT.labels("event-bulk-create-jobs").inc(80)
    metrics.BATCH_SIZE.labels("event-bulk-create-jobs").observe(40)
    metrics.REQUEST_SECONDS.labels("event-bulk-create-jobs", "2xx").observe(0.12)
    metrics.RETRIES.labels("event-bulk-create-jobs", "429").inc()
    metrics.RATE_LIMITED.labels("event-bulk-create-jobs").inc()
    metrics.GOVERNOR_WAIT.labels("event-bulk-create-jobs").inc(0.5)
    metrics.IN_FLIGHT_REQUESTS.set(1)
    metrics.PENDING_RECORDS.set(10)
    metrics.DEAD_LETTERS.labels("deliver", "invalid").inc()
    metrics.OFFSETS_STORED.inc(7)
    metrics.LAST_COMMIT.set(time.time())
    metrics.CONSUMER_LAG.labels("analytics", "0").set(12)
    metrics.ASSIGNED_PARTITIONS.set(1)
    metrics.STATE_KEYS.labels("dedup").set(100)
    metrics.CATALOG_RESOURCES.labels("item", "created").inc(99)
    metrics.CATALOG_RESOURCES.labels("item", "dead_lettered").inc()
    metrics.CATALOG_RECOVERED.labels("item", "create").inc()
    metrics.CATALOG_JOBS.set(2)
    metrics.CATALOG_JOB_SECONDS.labels("item", "create").observe(3.5)
    metrics.CATALOG_PENDING_RECORDS.set(150)


@pytest.fixture
async def observer() -> AsyncIterator[ObserverHandle]:
    set_sample_values()
    handle = await start_observer(0, Health(), host="127.0.0.1")
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def prometheus(observer: ObserverHandle) -> AsyncIterator[PrometheusHarness]:
    harness = PrometheusHarness([f"127.0.0.1:{observer.port}"])
    await asyncio.to_thread(harness.start)
    try:
        yield harness
    finally:
        await asyncio.to_thread(harness.stop)


async def test_prometheus_scrapes_the_observer_and_evaluates_every_expression(
    prometheus: PrometheusHarness,
) -> None:
    # Blocking HTTP calls run in a thread: this loop must keep answering the scrapes.
    up = await asyncio.to_thread(prometheus.wait_for_series, f'up{{job="{JOB}"}} == 1', 30)
    assert len(up) == 1
    # Two scrapes, so range functions (rate, deriv) have two points to work with.
    await asyncio.to_thread(
        prometheus.wait_for_series,
        f'count_over_time(klaviyo_stream_records_deduplicated_total{{job="{JOB}"}}[1m]) >= 2',
        30,
    )
    deduplicated = await asyncio.to_thread(
        prometheus.query, "klaviyo_stream_records_deduplicated_total"
    )
    assert float(deduplicated[0]["value"][1]) == metrics.RECORDS_DEDUPLICATED._value.get()

    failures: dict[str, str] = {}
    expressions = [grafana_to_promql(e) for e in dashboard_expressions()] + alert_expressions()
    assert expressions
    for expr in expressions:
        try:
            await asyncio.to_thread(prometheus.query, expr)
        except Exception as exc:  # collect them all, report at once
            failures[expr] = str(exc)
    assert not failures, failures


async def test_rule_manager_evaluates_every_alert_rule_healthily(
    prometheus: PrometheusHarness,
) -> None:
    await asyncio.to_thread(prometheus.wait_for_series, f'up{{job="{JOB}"}} == 1', 30)
    expected = {rule["alert"] for rule in alert_rules()}

    async def evaluated() -> bool:
        rules = await asyncio.to_thread(prometheus.rules)
        done = [r for r in rules if r.get("lastEvaluation", "").startswith("2")]
        return len(done) == len(expected)

    await wait_until(evaluated, timeout=30, what="every alert rule evaluated", poll=0.2)
    rules = await asyncio.to_thread(prometheus.rules)
    assert {r["name"] for r in rules} == expected
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    # With a healthy replica and fresh data, nothing should be firing.
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert not firing, firing
