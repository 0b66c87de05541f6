"""Profile upsert semantics, identity conflicts, GET filters and bulk import jobs."""

from __future__ import annotations

from typing import Any

import aiohttp

from stream.local.sandbox import SandboxServer
from tests.support.sandbox import get, post, upsert


async def _create(http: aiohttp.ClientSession, url: str, **attributes: Any) -> str:
    status, body, _ = await post(http, f"{url}/api/profile-import", upsert(**attributes))
    assert status == 201, body
    return str(body["data"]["id"])


async def test_upsert_create_update_null_clears_absent_keeps(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/api/profile-import"
    status, body, _ = await post(
        http,
        url,
        upsert(
            email="Ada@Example.com", first_name="Ada", title="Countess", properties={"a": 1, "b": 2}
        ),
    )
    assert status == 201
    assert body["data"]["type"] == "profile" and body["data"]["links"]["self"]
    pid = body["data"]["id"]
    assert body["data"]["attributes"]["email"] == "ada@example.com"
    status, body, _ = await post(
        http, url, upsert(email="ada@example.com", title=None, properties={"b": 3, "c": 4})
    )
    assert status == 200
    attributes = body["data"]["attributes"]
    assert body["data"]["id"] == pid
    assert attributes["first_name"] == "Ada"  # absent: kept
    assert attributes["title"] is None  # null: cleared
    assert attributes["properties"] == {"a": 1, "b": 3, "c": 4}  # merged key by key
    status, body, _ = await post(http, url, upsert(pid, external_id="u-7"))
    assert status == 200 and body["data"]["attributes"]["external_id"] == "u-7"
    assert len(sandbox.store.profiles) == 1


async def test_identifiers_of_two_profiles_conflict_with_409(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    first = await _create(http, sandbox.url, email="a@example.com")
    second = await _create(http, sandbox.url, phone_number="+14155552671")
    status, body, _ = await post(
        http,
        f"{sandbox.url}/api/profile-import",
        upsert(email="a@example.com", phone_number="+14155552671"),
    )
    assert status == 409
    error = body["errors"][0]
    assert error["code"] == "duplicate_profile" and error["status"] == 409
    assert error["meta"]["duplicate_profile_id"] == second
    status, body, _ = await post(
        http, f"{sandbox.url}/api/profile-import", upsert(second, email="A@example.com")
    )
    assert status == 409
    assert body["errors"][0]["meta"]["duplicate_profile_id"] == first


async def test_unknown_profile_id_on_upsert_is_404(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post(
        http, f"{sandbox.url}/api/profile-import", upsert("01UNKNOWN", email="x@example.com")
    )
    assert status == 404
    assert body["errors"][0]["code"] == "not_found"


async def test_get_profiles_filters(sandbox: SandboxServer, http: aiohttp.ClientSession) -> None:
    ada = await _create(http, sandbox.url, email="ada@example.com", phone_number="+14155552671")
    bob = await _create(http, sandbox.url, external_id="bob-1")
    url = f"{sandbox.url}/api/profiles"
    cases = {
        'equals(email,"ADA@example.com")': [ada],
        "equals(phone_number,'+14155552671')": [ada],
        'equals(external_id,"bob-1")': [bob],
        f'equals(id,"{bob}")': [bob],
        'equals(email,"nobody@example.com")': [],
        f'any(id,["{ada}","{bob}"])': [ada, bob],
    }
    for text, expected in cases.items():
        status, body, _ = await get(http, url, {"filter": text})
        assert status == 200, (text, body)
        assert [p["id"] for p in body["data"]] == expected, text
    status, body, _ = await get(http, url, {"filter": 'equals(first_name,"Ada")'})
    assert status == 400 and body["errors"][0]["source"] == {"parameter": "filter"}
    status, body, _ = await get(http, url, {"page[size]": "1"})
    assert [p["id"] for p in body["data"]] == [ada] and "next" in body["links"]
    status, body, _ = await get(http, body["links"]["next"])
    assert [p["id"] for p in body["data"]] == [bob]


async def test_bulk_import_job_status_and_errors(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    await _create(http, sandbox.url, email="taken@example.com")
    await _create(http, sandbox.url, external_id="ext-taken")
    profiles = [
        {"type": "profile", "attributes": {"email": "new@example.com", "properties": {"x": 1}}},
        {
            "type": "profile",
            "attributes": {"email": "taken@example.com", "external_id": "ext-taken"},
        },
        {"type": "profile", "attributes": {"email": "taken@example.com", "first_name": "T"}},
    ]
    body = {
        "data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}
    }
    status, created, _ = await post(http, f"{sandbox.url}/api/profile-bulk-import-jobs", body)
    assert status == 202
    job_id = created["data"]["id"]
    assert created["data"]["type"] == "profile-bulk-import-job"
    assert created["data"]["attributes"]["total_count"] == 3
    status, job, _ = await get(http, f"{sandbox.url}/api/profile-bulk-import-jobs/{job_id}")
    assert status == 200
    attributes = job["data"]["attributes"]
    assert attributes["status"] == "complete"
    assert (
        attributes["total_count"],
        attributes["completed_count"],
        attributes["failed_count"],
    ) == (3, 2, 1)
    status, errors, _ = await get(
        http, f"{sandbox.url}/api/profile-bulk-import-jobs/{job_id}/import-errors"
    )
    assert status == 200
    [error] = errors["data"]
    assert error["type"] == "import-error"
    assert error["attributes"]["code"] == "duplicate_profile"
    assert error["attributes"]["source"]["pointer"] == "/data/attributes/profiles/data/1"
    assert error["attributes"]["original_payload"]["attributes"]["external_id"] == "ext-taken"
    status, _, _ = await get(http, f"{sandbox.url}/api/profile-bulk-import-jobs/01NOJOB")
    assert status == 404
