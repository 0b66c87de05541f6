"""Schema Registry: ids in record headers and the GUID format; a client built from the settings
(basic auth over verified TLS against the real registry, bearer tokens and mutual TLS against
the stand-in); what the registry's answers mean: a setting's fault, an outage, or one id's."""

from __future__ import annotations

import base64
import json
import urllib.request
from contextlib import closing
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
from confluent_kafka.schema_registry.error import SchemaRegistryError
from pydantic import SecretStr

from stream.core.calls import Record
from stream.core.errors import ConfigError, DecodeError, RegistryUnavailable
from stream.core.settings import Settings
from stream.intake.avro import encode_confluent, load_schemas
from stream.intake.decode import LocalDecoder, RegistryDecoder, make_decoder
from stream.intake.registry import classify
from stream.local.registry import API
from stream.ops.produce import to_avro_record
from tests.support import free_port
from tests.support.registry import Registry
from tests.support.registry_standin import RegistryStandIn
from tests.support.tls import self_signed

ORDER = {
    "type": "track",
    "messageId": "m-guid",
    "timestamp": "2026-02-02T12:00:00Z",
    "userId": "u-1",
    "event": "Ordered Product",
    "properties": {"revenue": 12.5, "items": [{"sku": "A"}]},
}
TOKEN = "bearer-t0ken"


def http_json(method: str, url: str, body: object, user_info: str) -> Any:
    """One JSON request with basic auth (Apicurio's own API, for what ccompat cannot do)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", "Basic " + base64.b64encode(user_info.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


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


def _record(schema_id: int = 1) -> bytes:
    return encode_confluent(schema_id, load_schemas().current["track"], to_avro_record(ORDER)[1])


def _bearer(url: str, **tls: str) -> Settings:
    return Settings(
        schema_registry_url=url,
        schema_registry_bearer_token=SecretStr(TOKEN),
        schema_registry_bearer_logical_cluster="lsrc-1",
        **tls,
    )


# bearer tokens and mutual TLS: the stand-in (Apicurio takes tokens only from an OIDC provider)


def test_a_bearer_token_over_verified_tls(tmp_path: Path) -> None:
    with RegistryStandIn(tmp_path, f"Bearer {TOKEN}") as standin:
        settings = _bearer(standin.url, schema_registry_ssl_ca_location=str(standin.ca))
        with closing(make_decoder(settings)) as decoder:
            assert decoder.decode(_record()).message_id == "m-guid"
    assert standin.seen[-1].get("target-sr-cluster") == "lsrc-1"


def test_an_untrusted_certificate_stops_before_the_token_is_sent(tmp_path: Path) -> None:
    with (
        RegistryStandIn(tmp_path, f"Bearer {TOKEN}") as standin,
        pytest.raises(ConfigError, match="CERTIFICATE_VERIFY_FAILED") as refused,
        closing(make_decoder(_bearer(standin.url))) as decoder,  # no CA file: not trusted
    ):
        decoder.decode(_record())
    assert TOKEN not in str(refused.value)
    assert standin.seen == [], "a request crossed a connection whose certificate was not trusted"


def test_mutual_tls_with_the_client_certificate_and_refused_without(tmp_path: Path) -> None:
    client = tmp_path / "client"
    client.mkdir()
    self_signed(client)  # the client's certificate, trusted by the registry as its own CA
    with RegistryStandIn(tmp_path, f"Bearer {TOKEN}", client_ca=client / "cert.pem") as standin:
        tls = {"schema_registry_ssl_ca_location": str(standin.ca)}
        mutual = {
            "schema_registry_ssl_certificate_location": str(client / "cert.pem"),
            "schema_registry_ssl_key_location": str(client / "key.pem"),
        }
        with closing(make_decoder(_bearer(standin.url, **tls, **mutual))) as decoder:
            assert decoder.decode(_record()).message_id == "m-guid"
        with (
            closing(make_decoder(_bearer(standin.url, **tls))) as decoder,
            pytest.raises(ConfigError, match="SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION"),
        ):
            decoder.decode(_record())


# the real registry: basic auth, HTTPS, and what its answers mean


def _registered(registry: Registry) -> int:
    with registry.client("writer") as client:
        return int(client.register_schema("decode-t-track", Schema(load_schemas().raw["track"])))


def test_basic_auth_over_verified_tls(registry: Registry) -> None:
    schema_id = _registered(registry)
    settings = Settings(
        schema_registry_url=registry.server.tls_url,
        schema_registry_ssl_ca_location=str(registry.ca),
        schema_registry_basic_auth_user_info=SecretStr(registry.user_info("reader")),
    )
    with closing(make_decoder(settings)) as decoder:
        assert decoder.decode(_record(schema_id)).message_id == "m-guid"


@pytest.mark.parametrize(
    ("user", "setting", "status"),
    [
        ("wrong", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "401"),
        ("missing", "SCHEMA_REGISTRY_URL", "401"),
        ("nobody", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "403"),
    ],
)
async def test_credentials_the_registry_refuses_are_one_configuration_error_at_start(
    registry: Registry, user: str, setting: str, status: str
) -> None:
    """Checked by the first `prepare` (before any record): `run` stops at start, exit 2."""
    info = {
        "wrong": "reader:" + registry.passwords["reader"] + "-not",
        "nobody": registry.user_info("nobody"),
    }.get(user)
    settings = Settings(
        schema_registry_url=registry.url,
        schema_registry_basic_auth_user_info=SecretStr(info) if info else None,
    )
    with closing(make_decoder(settings)) as decoder, pytest.raises(ConfigError) as refused:
        await decoder.prepare([])
    message = str(refused.value)
    assert message.startswith(f"{setting}: ") and f"({status})" in message, message
    assert "\n" not in message and not any(p in message for p in registry.passwords.values())


async def test_answers_about_one_id_are_dead_letter_reasons_with_the_registrys_words(
    registry: Registry,
) -> None:
    """404 (an id the registry does not know) and 400 (a schema it will not serve: one with a
    "{}" string default, registered through Apicurio's own API) are about that id only."""
    earlier = load_schemas().raw["track"].replace('"{ }"', '"{}"')
    native = registry.url.removesuffix(API) + "/apis/registry/v3/groups/default/artifacts"
    body = {"artifactId": "decode-unreadable", "artifactType": "AVRO",
            "firstVersion": {"content": {"content": earlier, "contentType": "application/json"}}}
    created = http_json("POST", native, body, registry.user_info("writer"))
    unreadable = int(created["version"]["contentId"])
    values = [_record(987_654), _record(unreadable)]
    with closing(make_decoder(Settings(**registry.settings()))) as decoder:  # type: ignore[arg-type]
        await decoder.prepare([Record("t", 0, n, value=v) for n, v in enumerate(values)])
        with pytest.raises(DecodeError, match="unknown schema id 987654: No content with ID"):
            decoder.decode(values[0])
        with pytest.raises(DecodeError) as refused:
            decoder.decode(values[1])
    assert str(refused.value) == (
        f"schema id {unreadable}: the Schema Registry answered 400: "
        "Failed to discover artifact type from content."
    )


async def test_a_registry_that_does_not_answer_is_an_outage() -> None:
    settings = Settings(schema_registry_url=f"http://127.0.0.1:{free_port()}")
    with closing(make_decoder(settings)) as decoder, pytest.raises(RegistryUnavailable):
        await decoder.prepare([Record("t", 0, 0, value=_record())])


@pytest.mark.parametrize(
    ("status", "meaning"),
    [(401, ConfigError), (403, ConfigError), (302, ConfigError),
     (408, RegistryUnavailable), (429, RegistryUnavailable), (500, RegistryUnavailable),
     (503, RegistryUnavailable), (400, None), (404, None), (409, None), (422, None)],
)  # fmt: skip
def test_what_each_answer_means(status: int, meaning: type | None) -> None:
    """The classification (5xx and 429 cannot be had from the real registry on demand)."""
    problem = classify(SchemaRegistryError(status, -1, "said"), "SCHEMA_REGISTRY_URL")
    assert (type(problem) if problem is not None else None) is meaning
    if problem is not None:
        assert f"{status}: said" in str(problem)


def test_make_decoder_without_a_registry_is_local() -> None:
    assert isinstance(make_decoder(Settings()), LocalDecoder)
    assert isinstance(make_decoder(None), LocalDecoder)
    assert isinstance(make_decoder("mock://older-call"), RegistryDecoder)
