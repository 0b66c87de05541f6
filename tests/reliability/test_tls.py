"""TLS toward Klaviyo is verified: a server with a certificate nobody vouches for is refused."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from stream.errors import KlaviyoUnavailable
from stream.klaviyo.client import EVENTS, KlaviyoClient

KEY = "pk_tls_secret_0000000000000000000000000000"


def self_signed(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


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
