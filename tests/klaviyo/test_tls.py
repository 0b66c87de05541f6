"""TLS toward Klaviyo is verified: a server with a certificate nobody vouches for is refused."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from pydantic import SecretStr

from stream.core.errors import KlaviyoUnavailable
from stream.klaviyo.client import EVENTS, KlaviyoClient
from tests.support.tls import self_signed

KEY = "pk_tls_secret_0000000000000000000000000000"


async def test_untrusted_certificate_is_refused_and_the_key_is_never_sent(tmp_path: Path) -> None:
    received: list[str] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(request.headers.get("Authorization", ""))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post(EVENTS, accept)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed(tmp_path))
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with KlaviyoClient(
            f"https://127.0.0.1:{port}", SecretStr(KEY), "2026-07-15"
        ) as client:
            try:
                await client.post(EVENTS, {"data": {}})
            except KlaviyoUnavailable as exc:
                error = exc
            else:
                raise AssertionError("a self-signed certificate was accepted")
    finally:
        await runner.cleanup()
    assert received == []  # the request (and its API key) never left over the bad connection
    assert KEY not in str(error) and KEY not in repr(error)
