"""Schema Registry: ids in record headers and the GUID format, and a client built from the
settings with basic or bearer auth over verified TLS."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import (
    MessageField,
    Schema,
    SchemaRegistryClient,
    SerializationContext,
    header_schema_id_serializer,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from pydantic import SecretStr

from stream.core.errors import ConfigError, DecodeError
from stream.core.settings import Settings
from stream.intake.avro import encode_confluent, load_schemas
from stream.intake.decode import LocalDecoder, RegistryDecoder, make_decoder
from stream.ops.produce import to_avro_record
from tests.support.tls import self_signed

ORDER = {
    "type": "track",
    "messageId": "m-guid",
    "timestamp": "2026-02-02T12:00:00Z",
    "userId": "u-1",
    "event": "Ordered Product",
    "properties": {"revenue": 12.5, "items": [{"sku": "A"}]},
}
PASSWORD = "registry-Pa55"
TOKEN = "bearer-t0ken"


def _serializer(registry: Any, header_ids: bool) -> AvroSerializer:
    conf: dict[str, Any] = {"auto.register.schemas": True}
    if header_ids:
        conf["schema.id.serializer"] = header_schema_id_serializer
    return AvroSerializer(registry, load_schemas().raw["track"], conf=conf)


def test_schema_id_in_the_record_headers_as_confluent_kafka_writes_it() -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://headers"})
    headers: list[tuple[str, str | bytes | None]] = []
    value = _serializer(registry, header_ids=True)(
        to_avro_record(ORDER)[1], SerializationContext("t", MessageField.VALUE, headers)
    )
    assert value is not None and [name for name, _ in headers] == ["__value_schema_id"]
    decoder = RegistryDecoder(registry)
    call = decoder.decode(value, headers)
    assert call.message_id == "m-guid" and call.properties == ORDER["properties"]
    with pytest.raises(DecodeError):  # without its header the body alone is not readable
        decoder.decode(value)


def test_guid_prefix_format_decodes() -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://guid"})
    registered = registry.register_schema_full_response(
        "t-track", Schema(load_schemas().raw["track"], "AVRO")
    )
    classic = encode_confluent(registered.schema_id, load_schemas().current["track"],
                               to_avro_record(ORDER)[1])
    import uuid

    guid_value = b"\x01" + uuid.UUID(registered.guid).bytes + classic[5:]
    decoder = RegistryDecoder(registry)
    assert decoder.decode(guid_value).message_id == "m-guid"
    assert decoder.decode(classic).message_id == "m-guid"
    with pytest.raises(DecodeError, match="truncated schema GUID"):
        decoder.decode(b"\x01\x00\x00\x00\x01abc")
    with pytest.raises(DecodeError, match="wrong magic byte 07"):
        decoder.decode(b"\x07\x00\x00\x00\x01abc")


class _Registry(BaseHTTPRequestHandler):
    """The two Schema Registry REST calls the decoder makes, behind an Authorization check."""

    expected = ""
    schema = ""
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(dict(self.headers))
        if self.headers.get("Authorization") != self.expected:
            self._send(401, {"error_code": 40101, "message": "Unauthorized"})
        elif self.path.startswith("/schemas/ids/1"):
            self._send(200, {"schema": self.schema})
        else:
            self._send(404, {"error_code": 40403, "message": "Schema not found"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def https_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS registry endpoint on loopback with a self-signed certificate; (url, CA file)."""
    context: ssl.SSLContext = self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _Registry.schema = load_schemas().raw["track"]
    _Registry.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tmp_path / "cert.pem"
    finally:
        server.shutdown()
        server.server_close()


def _record() -> bytes:
    return encode_confluent(1, load_schemas().current["track"], to_avro_record(ORDER)[1])


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_registry_client_from_settings_authenticates_over_verified_tls(
    https_registry: tuple[str, Path], auth: str
) -> None:
    url, ca = https_registry
    if auth == "basic":
        _Registry.expected = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
        creds: dict[str, Any] = {
            "schema_registry_basic_auth_user_info": SecretStr(f"reader:{PASSWORD}")
        }
    else:
        _Registry.expected = f"Bearer {TOKEN}"
        creds = {
            "schema_registry_bearer_token": SecretStr(TOKEN),
            "schema_registry_bearer_logical_cluster": "lsrc-1",
        }
    settings = Settings(schema_registry_url=url, schema_registry_ssl_ca_location=str(ca), **creds)
    assert make_decoder(settings).decode(_record()).message_id == "m-guid"
    if auth == "bearer":
        assert _Registry.seen[-1].get("target-sr-cluster") == "lsrc-1"


def test_registry_refusals_are_configuration_errors_without_the_credentials(
    https_registry: tuple[str, Path],
) -> None:
    url, ca = https_registry
    _Registry.expected = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
    wrong = Settings(
        schema_registry_url=url,
        schema_registry_ssl_ca_location=str(ca),
        schema_registry_basic_auth_user_info=SecretStr("reader:not-the-password"),
    )
    with pytest.raises(ConfigError, match="refused our credentials") as refused:
        make_decoder(wrong).decode(_record())
    assert "not-the-password" not in str(refused.value)
    untrusted = Settings(  # no CA file: the self-signed certificate is not trusted
        schema_registry_url=url,
        schema_registry_basic_auth_user_info=SecretStr(f"reader:{PASSWORD}"),
    )
    with pytest.raises(ConfigError, match="CERTIFICATE_VERIFY_FAILED"):
        make_decoder(untrusted).decode(_record())
    # the right credentials never crossed the connection whose certificate was not trusted
    sent = [h.get("Authorization") for h in _Registry.seen]
    assert sent and _Registry.expected not in sent


def test_make_decoder_without_a_registry_is_local() -> None:
    assert isinstance(make_decoder(Settings()), LocalDecoder)
    assert isinstance(make_decoder(None), LocalDecoder)
    assert isinstance(make_decoder("mock://older-call"), RegistryDecoder)
