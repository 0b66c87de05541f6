"""/readyz follows the broker: a replica whose brokers are all down says so, and recovers.

A broker of its own (the session's is shared), stopped and started again on the same port and
data while the real service runs against it with its observer. librdkafka reports "all
brokers down" through the consumer's error callback; a metadata probe proves it is back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.telemetry.observe import start_observer
from tests.support import running_service, service_settings, wait_until
from tests.support.harness import create_topic
from tests.support.kafka import new_broker


@pytest.mark.slow
async def test_readyz_reports_an_unreachable_broker_and_recovers(tmp_path: Path) -> None:
    kafka = new_broker(work_dir=tmp_path / "kafka")
    bootstrap = await asyncio.to_thread(kafka.start)
    try:
        topic = create_topic(bootstrap, "readiness", 2)
        with SandboxThread(SandboxConfig()) as sandbox:
            settings = service_settings(bootstrap, topic, sandbox.url)
            async with (
                running_service(settings) as service,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            ):
                observer = await start_observer(0, service.health, host="127.0.0.1")
                base = f"http://127.0.0.1:{observer.port}"

                async def get(path: str) -> tuple[int, Any]:
                    async with http.get(base + path) as resp:
                        return resp.status, await resp.json()

                async def ready() -> bool:
                    return (await get("/readyz"))[0] == 200

                async def broker_unreachable() -> bool:
                    status, body = await get("/readyz")
                    return status == 503 and "broker unreachable" in body["failing"]

                try:
                    await wait_until(ready, timeout=60, what="ready on a running broker")
                    await asyncio.to_thread(kafka.stop)
                    await wait_until(broker_unreachable, timeout=60, what="broker unreachable")
                    status, body = await get("/readyz")
                    assert body["failing"] == ["broker unreachable"]  # still assigned, alive
                    assert (await get("/healthz"))[0] == 200  # the loop turns: no restart
                    await asyncio.to_thread(kafka.start)
                    await wait_until(ready, timeout=120, what="ready again after the restart")
                finally:
                    await observer.close()
    finally:
        await asyncio.to_thread(kafka.stop)
