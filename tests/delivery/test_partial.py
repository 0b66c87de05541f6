"""Partial failures inside one bulk request: per record, even when batched.

A profile bulk import job is accepted as a whole (202) and fails single profiles later; the
service polls the job and reads its `/import-errors`, so exactly the failed profiles get a
second treatment (a split person is healed by a merge; any other failure is dead-lettered
with Klaviyo's code and pointer) while the rest of the batch counts as delivered.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer
from pydantic import SecretStr

from stream.core.errors import ImportRecordFailed
from stream.core.settings import SANDBOX_API_KEY
from stream.delivery.deliver import Deliverer
from stream.klaviyo.client import PROFILE_IMPORT, PROFILES_BULK, KlaviyoClient
from stream.klaviyo.governor import Governor
from stream.klaviyo.importjob import import_failures
from stream.klaviyo.mapping import bulk_profiles_body, profile_import_body
from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support import running_service, sandbox_get, service_settings, wait_until
from tests.support.corpus import encode
from tests.support.harness import stats, topic_size


def _identify(n: int, email: str | None = None) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"import-{n}",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "userId": f"user-{n}",
        "traits": {"email": email or f"person{n}@example.com", "firstName": f"P{n}"},
    }


async def test_bulk_import_job_errors_are_read_per_record(kafka_bootstrap: str) -> None:
    """The job's import-errors name exactly the failed profiles of a 202-accepted batch."""
    profiles = [{"email": f"job{n}@example.com", "external_id": f"job-{n}"} for n in range(6)]
    key = SecretStr(SANDBOX_API_KEY)
    async with (
        SandboxServer(SandboxConfig(rate_limits=False)) as sandbox,
        KlaviyoClient(sandbox.url, key, "2026-07-15") as client,
    ):
        await client.post(PROFILE_IMPORT, profile_import_body({"email": "job2@example.com"}))
        await client.post(PROFILE_IMPORT, profile_import_body({"external_id": "job-2"}))
        await client.post(PROFILE_IMPORT, profile_import_body({"email": "job4@example.com"}))
        await client.post(PROFILE_IMPORT, profile_import_body({"external_id": "job-4"}))
        accepted = await client.post(PROFILES_BULK, bulk_profiles_body(profiles))
        deliverer = Deliverer(client, governor=Governor({}))  # its paced, retried requests
        failures = await import_failures(deliverer.request, accepted, profiles, max_seconds=30)
    assert accepted.status == 202
    assert sorted(failures) == [2, 4]
    for index, error in failures.items():
        assert isinstance(error, ImportRecordFailed)
        assert error.code == "duplicate_profile"
        assert error.pointers == [f"/data/attributes/profiles/data/{index}"]


async def test_a_split_person_in_a_bulk_import_is_healed_not_lost(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """A profile the job failed (duplicate_profile) is upserted alone and merged; the rest of
    the batch is imported; nothing is dead-lettered and nothing is lost."""
    topic = topic_factory(partitions=1)
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        # two existing profiles; call 5 names the email of one and the external_id of the other
        async with KlaviyoClient(sandbox.url, SecretStr(SANDBOX_API_KEY), "2026-07-15") as client:
            await client.post(PROFILE_IMPORT, profile_import_body({"email": "taken@example.com"}))
            await client.post(PROFILE_IMPORT, profile_import_body({"external_id": "user-5"}))
        calls = [_identify(n, "taken@example.com" if n == 5 else None) for n in range(12)]
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for call in calls:
            producer.produce(topic, value=encode(call), key=b"k")
        assert producer.flush(30) == 0
        settings = service_settings(kafka_bootstrap, topic, sandbox.url, batch_linger_ms=500)

        async def finished() -> bool:
            now = await stats(sandbox.url)
            return int(now["merges"]) >= 1 and int(now["profiles"]) >= 12

        async with running_service(settings) as service:
            await wait_until(finished, timeout=120, what="11 imported, 1 healed by a merge")
        requests = (await stats(sandbox.url))["requests"]
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
    assert "POST /api/profile-bulk-import-jobs" in requests, "the batch went to a bulk job"
    assert any("import-errors" in endpoint for endpoint in requests)
    assert service.result.dead_lettered == 0
    assert topic_size(kafka_bootstrap, settings.dlq_topic) == 0
    by_external = {p["attributes"].get("external_id"): p for p in profiles}
    assert {f"user-{n}" for n in range(12)} <= set(by_external)
    assert by_external["user-5"]["attributes"]["email"] == "taken@example.com"
