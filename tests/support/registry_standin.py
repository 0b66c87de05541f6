"""A small HTTP stand-in of the Schema Registry's REST API, kept ONLY for what the real registry
the tests run (Apicurio Registry, `tests/support/registry.py`) cannot do on this machine:

- bearer tokens: Apicurio takes them only from an OpenID Connect provider, and none runs here;
- mutual TLS: a registry that asks for the client's certificate.

Everything else (basic auth, HTTPS, unknown ids, refusals, outages) is tested against the real
registry. This serves the calls the decoder makes (`GET /schemas/types`, `GET /schemas/ids/1`)
over TLS, behind an `Authorization` check, and records the headers it was sent.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from stream.intake.avro import load_schemas

JSON = "application/vnd.schemaregistry.v1+json"


class RegistryStandIn:
    """`with RegistryStandIn(tmp_path, authorization="Bearer …") as registry:` … `registry.url`
    (HTTPS; `registry.ca` verifies it). `client_ca`: a CA file the client's certificate must
    be signed by (mutual TLS). Schema id 1 is our current `track` schema."""

    def __init__(
        self, directory: Path, authorization: str, client_ca: Path | None = None
    ) -> None:
        from tests.support.tls import self_signed

        context = self_signed(directory)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        self.ca = directory / "cert.pem"
        self.seen: list[dict[str, str]] = []
        handler = type("Handler", (_Handler,), {"standin": self, "expected": authorization})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RegistryStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    standin: RegistryStandIn
    expected: str

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.standin.seen.append(dict(self.headers))
        if self.headers.get("Authorization") != self.expected:
            self._send(401, {"error_code": 40101, "message": "Unauthorized"})
        elif self.path.startswith("/schemas/types"):
            self._send(200, ["AVRO"])
        elif self.path.startswith("/schemas/ids/1"):
            self._send(200, {"schema": load_schemas().raw["track"]})
        else:
            self._send(404, {"error_code": 40403, "message": "Schema not found"})

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""
