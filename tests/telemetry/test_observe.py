"""The operations endpoints: /metrics exposes the shared registry, /healthz liveness, /readyz
readiness with the reasons it is not ready."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from stream.telemetry import metrics
from stream.telemetry.health import Health
from stream.telemetry.observe import ObserverHandle, start_observer


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
async def observer(health: Health) -> AsyncIterator[ObserverHandle]:
    handle = await start_observer(0, health, host="127.0.0.1")
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def url(handle: ObserverHandle, path: str) -> str:
    return f"http://127.0.0.1:{handle.port}{path}"


async def test_port_zero_binds_a_real_port(observer: ObserverHandle) -> None:
    assert observer.port > 0


async def test_metrics_exposes_the_registry_in_prometheus_text_format(
    observer: ObserverHandle, http: aiohttp.ClientSession
) -> None:
    before = metrics.RECORDS_DEDUPLICATED._value.get()
    metrics.RECORDS_DEDUPLICATED.inc(3)
    async with http.get(url(observer, "/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST  # text/plain; version=...
        body = await resp.text()
    samples = {
        s.name: s.value for family in text_string_to_metric_families(body) for s in family.samples
    }
    assert samples["klaviyo_stream_records_deduplicated_total"] == before + 3


async def test_healthz_is_200_while_the_loop_turns(
    observer: ObserverHandle, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(observer, "/healthz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "alive"}


async def test_healthz_is_503_when_the_loop_is_stuck(
    observer: ObserverHandle, http: aiohttp.ClientSession, health: Health
) -> None:
    health.last_poll = time.monotonic() - health.stuck_after_seconds - 1
    async with http.get(url(observer, "/healthz")) as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "stuck"


async def test_readyz_is_503_with_reasons_until_assigned_and_connected(
    observer: ObserverHandle, http: aiohttp.ClientSession, health: Health
) -> None:
    async with http.get(url(observer, "/readyz")) as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "not ready"
    assert body["failing"] == ["broker unreachable", "no partitions assigned"]

    health.broker_reachable = True
    async with http.get(url(observer, "/readyz")) as resp:
        assert resp.status == 503
        assert (await resp.json())["failing"] == ["no partitions assigned"]

    health.assigned_partitions = 2
    async with http.get(url(observer, "/readyz")) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ready"


async def test_readyz_is_503_while_stopping(
    observer: ObserverHandle, http: aiohttp.ClientSession, health: Health
) -> None:
    health.broker_reachable = True
    health.assigned_partitions = 1
    health.stopping = True
    async with http.get(url(observer, "/readyz")) as resp:
        assert resp.status == 503
        assert (await resp.json())["failing"] == ["stopping"]


async def test_close_releases_the_port(health: Health, http: aiohttp.ClientSession) -> None:
    handle = await start_observer(0, health, host="127.0.0.1")
    port = handle.port
    await handle.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"http://127.0.0.1:{port}/healthz"):
            pass


async def test_a_standby_without_partitions_is_ready_only_when_allowed() -> None:
    """A group with more replicas than partitions keeps standbys: with READY_WITHOUT_PARTITIONS
    they are ready (a rolling update goes on); without it they are not."""
    for required, expected in ((True, 503), (False, 200)):
        health = Health(broker_reachable=True, partitions_required=required)
        health.polled()
        handle = await start_observer(0, health, host="127.0.0.1")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{handle.port}/readyz") as resp,
            ):
                assert resp.status == expected
                if expected == 503:
                    assert (await resp.json())["failing"] == ["no partitions assigned"]
        finally:
            await handle.close()
