"""The operations endpoints on METRICS_PORT: `/metrics`, `/healthz` and `/readyz`.

A small aiohttp app that reads the shared metrics `REGISTRY` and a `Health` object; it never
writes either. `/healthz` answers "is the process looping" (restart it if not), `/readyz` answers
"is it doing useful work" (assigned partitions, broker reachable), with the failing conditions
in the body so an operator sees why without reading logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.telemetry.health import Health
from stream.telemetry.metrics import REGISTRY

HEALTH_KEY: web.AppKey[Health] = web.AppKey("health", Health)


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of every metric in the shared registry."""
    body = generate_latest(REGISTRY)
    response = web.Response(body=body)
    # CONTENT_TYPE_LATEST carries the `version=` parameter aiohttp's content_type= refuses.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _healthz(request: web.Request) -> web.Response:
    """200 while the poll loop turns; 503 when it has been stuck past its limit."""
    health = request.app[HEALTH_KEY]
    if health.alive:
        return web.json_response({"status": "alive"})
    stuck = round(time.monotonic() - health.last_poll, 1)
    return web.json_response({"status": "stuck", "seconds_since_poll": stuck}, status=503)


def failing_conditions(health: Health) -> list[str]:
    """The readiness conditions that do not hold, in a stable order (empty when ready)."""
    failing: list[str] = []
    if not health.alive:
        failing.append("poll loop stuck")
    if not health.broker_reachable:
        failing.append("broker unreachable")
    if health.assigned_partitions <= 0 and health.partitions_required:
        failing.append("no partitions assigned")
    if health.stalled:
        failing.append("partition stalled")
    if health.waiting_for is not None:
        failing.append(f"waiting for the {health.waiting_for}")
    if health.stopping:
        failing.append("stopping")
    return failing


async def _readyz(request: web.Request) -> web.Response:
    """200 when ready; 503 with `{"status": "not ready", "failing": [...]}` otherwise."""
    health = request.app[HEALTH_KEY]
    if health.ready:
        return web.json_response(
            {"status": "ready", "assigned_partitions": health.assigned_partitions}
        )
    body = {"status": "not ready", "failing": failing_conditions(health)}
    return web.json_response(body, status=503)


def build_app(health: Health) -> web.Application:
    """The aiohttp application serving the three endpoints for one `Health`."""
    app = web.Application()
    app[HEALTH_KEY] = health
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


@dataclass
class ObserverHandle:
    """A running observer: `port` is the bound port (the real one when 0 was asked)."""

    host: str
    port: int
    _runner: web.AppRunner

    async def close(self) -> None:
        """Stop listening and release the socket; safe to call twice."""
        await self._runner.cleanup()


async def start_observer(port: int, health: Health, host: str = "0.0.0.0") -> ObserverHandle:
    """Serve `/metrics`, `/healthz`, `/readyz` on `host:port` until `close()` is awaited."""
    runner = web.AppRunner(build_app(health), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses  # socknames of the listening sockets
    bound = int(addresses[0][1]) if addresses else port
    return ObserverHandle(host=host, port=bound, _runner=runner)
