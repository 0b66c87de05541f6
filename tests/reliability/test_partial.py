"""Partial failures inside one bulk request: per record, even when batched.

A profile bulk import job is accepted as a whole (202) and fails single profiles later; the
service polls the job, reads its `/import-errors`, and dead-letters exactly the failed
profiles (with Klaviyo's code and pointer), while the rest of the batch counts as delivered.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer
from pydantic import SecretStr

from stream.klaviyo.client import PROFILE_IMPORT, KlaviyoClient
from stream.klaviyo.mapping import profile_import_body
from stream.sandbox import SandboxConfig, SandboxServer
from stream.settings import SANDBOX_API_KEY
from tests.reliability.corpus import encode
from tests.reliability.harness import stats, topic_size
from tests.support import read_topic, running_service, sandbox_get, service_settings, wait_until


def _identify(n: int, email: str | None = None) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"import-{n}",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "userId": f"user-{n}",
        "traits": {"email": email or f"person{n}@example.com", "firstName": f"P{n}"},
    }


async def test_bulk_import_job_errors_become_per_record_dead_letters(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
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
            return (
                topic_size(kafka_bootstrap, settings.dlq_topic) >= 1
                and int((await stats(sandbox.url))["profiles"]) >= 2 + 11
            )

        async with running_service(settings) as service:
            await wait_until(finished, timeout=120, what="11 imported, 1 dead-lettered")
        requests = (await stats(sandbox.url))["requests"]
        profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
    assert "POST /api/profile-bulk-import-jobs" in requests, "the batch went to the bulk job"
    assert any("import-errors" in endpoint for endpoint in requests)
    assert service.result.dead_lettered == 1
    [letter] = read_topic(kafka_bootstrap, settings.dlq_topic, 1)
    headers = {k: v.decode() for k, v in letter.headers() or [] if v is not None}
    assert letter.value() == encode(calls[5])
    assert headers["dlq.stage"] == "import-job"
    assert headers["dlq.error.class"] == "ImportRecordFailed"
    assert headers["dlq.klaviyo.code"] == "duplicate_profile"
    assert headers["dlq.klaviyo.pointer"].startswith("/data/attributes/profiles/data/")
    imported = {p["attributes"].get("external_id") for p in profiles}
    assert {f"user-{n}" for n in range(12) if n != 5} <= imported
