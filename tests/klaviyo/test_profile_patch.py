"""Per-call profile patches as the mapping writes them, applied by the Klaviyo sandbox.

The service wires `mapping.profile_meta` into its upserts in the pipeline core; this test shows
the bodies it will send do what docs/what-is-sent.md promises once they reach Klaviyo (the
sandbox follows Klaviyo's `meta.patch_properties` rules and validates bodies against the
official OpenAPI).
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from stream.core.calls import Call, normalize
from stream.core.identifiers import identifiers_of
from stream.core.settings import SANDBOX_API_KEY
from stream.klaviyo import mapping
from stream.klaviyo.client import PROFILE_IMPORT, KlaviyoClient
from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support import sandbox_get


def identify(n: int, traits: dict[str, Any], klaviyo: dict[str, Any] | None = None) -> Call:
    record: dict[str, Any] = {
        "messageId": f"m-{n}",
        "timestamp": "2026-03-01T10:00:00Z",
        "userId": "u-1",
        "traits": {"email": "ann@example.com", **traits},
    }
    if klaviyo is not None:
        record["integrations"] = {"Klaviyo": klaviyo}
    return normalize("identify", record)


def upsert_body(call: Call) -> dict[str, Any]:
    attributes = mapping.profile_attributes(call, identifiers_of(call, "US")[0])
    return mapping.profile_import_body(attributes, mapping.profile_meta(call.options))


async def test_unset_removes_a_property_and_append_grows_a_list_at_klaviyo() -> None:
    calls = [
        identify(1, {"plan": "trial", "skus": ["A-1"], "company": {"name": "Initech", "id": 7},
                     "address": {"city": "Lyon", "postalCode": 69001}}),
        identify(2, {"plan": "trial", "seats": 3},
                 {"unset": ["plan", "never_set"], "append": {"skus": ["B-2", "C-3"]}}),
    ]  # fmt: skip
    async with SandboxServer(SandboxConfig()) as sandbox:
        key = SecretStr(SANDBOX_API_KEY)
        client = KlaviyoClient(sandbox.url, key, "2026-07-15", max_connections=1)
        async with client:
            for call in calls:
                response = await client.post(PROFILE_IMPORT, upsert_body(call))
                assert response.status in (200, 201)
        [stored] = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
    assert stored["properties"] == {"skus": ["A-1", "B-2", "C-3"], "company": {"id": 7},
                                    "seats": 3}  # fmt: skip
    assert stored["attributes"]["organization"] == "Initech"
    assert stored["location"] == {"city": "Lyon", "zip": "69001"}
