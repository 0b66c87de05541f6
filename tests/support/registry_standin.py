"""A small HTTP stand-in of the Confluent Schema Registry's REST API, for registry tests.

No real Schema Registry can be installed on these machines (Confluent's is not on Maven
Central, Karapace is not on PyPI). This serves what confluent-kafka's `SchemaRegistryClient`
calls for our records — register a schema under a subject, fetch a schema by id — and can be
told to answer 503 (an outage) or be stopped (connection refused). An id never registered
answers 404 with the registry's error code 40403.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

JSON = "application/vnd.schemaregistry.v1+json"


class RegistryStandIn:
    """`with RegistryStandIn() as registry:` … `registry.url`, `registry.outage = True`."""

    def __init__(self) -> None:
        self.outage = False
        self.schemas: dict[int, str] = {}
        self.requests = 0
        self._by_text: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> RegistryStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def stop(self) -> None:
        """Stop listening: clients now meet a refused connection."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._runner = None

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_get("/schemas/ids/{id}", self._schema)
        app.router.add_get("/subjects", self._subjects)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def _refuse(self) -> web.Response | None:
        self.requests += 1
        if self.outage:
            return web.json_response(
                {"error_code": 50301, "message": "stand-in outage"}, status=503, content_type=JSON
            )
        return None

    async def _register(self, request: web.Request) -> web.Response:
        refused = self._refuse()
        if refused is not None:
            return refused
        text = (await request.json())["schema"]
        schema_id = self._by_text.get(text)
        if schema_id is None:
            schema_id = self._by_text[text] = len(self.schemas) + 1
            self.schemas[schema_id] = text
        return web.json_response({"id": schema_id}, content_type=JSON)

    async def _schema(self, request: web.Request) -> web.Response:
        refused = self._refuse()
        if refused is not None:
            return refused
        text = self.schemas.get(int(request.match_info["id"]))
        if text is None:
            body = {"error_code": 40403, "message": "Schema not found"}
            return web.json_response(body, status=404, content_type=JSON)
        return web.json_response({"schema": text}, content_type=JSON)

    async def _subjects(self, request: web.Request) -> web.Response:
        refused = self._refuse()
        return refused or web.json_response([], content_type=JSON)
