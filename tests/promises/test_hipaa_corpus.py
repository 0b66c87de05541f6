"""HIPAA mode end to end: a corpus seeded with PHI-like fields goes through the real broker and
service; no PHI value may appear in any request the sandbox received, any log line, any metric
or any dead letter (value, key or headers)."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from prometheus_client import generate_latest

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import Encoder, publish
from stream.telemetry import metrics
from stream.telemetry.logs import configure_logging
from tests.support import read_topic, running_service, sandbox_get, service_settings, wait_until
from tests.support.destination import write_yaml

PERSONS = 20
PHI = {
    "diagnosis": "PHI-DIAGNOSIS-E11.9",
    "medication": "PHI-MEDICATION-metformin",
    "ssn": "PHI-SSN-078-05-1120",
    "dateOfBirth": "PHI-DOB-1961-04-12",
    "notes": "PHI-NOTES patient reports chest pain",
    "phone": "+14155550123",
}
IP = "203.0.113.77"
USER_AGENT = "PHI-UA Mozilla/5.0 (CardioClinicApp)"
URL = "https://clinic.example/PHI-URL-oncology"
RAW_KEY = b"PHI-KEY-ssn-078-05-1120"
SECRETS = [*PHI.values(), IP, USER_AGENT, URL, RAW_KEY.decode(), "PHI-HEADER"]


def corpus() -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for p in range(PERSONS):
        context = {"ip": IP, "userAgent": USER_AGENT, "page": {"url": URL}, "locale": "en-US"}
        calls.append({
            "type": "identify", "messageId": f"id-{p}", "timestamp": "2025-03-01T10:00:00Z",
            "userId": f"patient-{p}", "context": context,
            "traits": {"email": f"p{p}@example.com", "firstName": "Pat", **PHI},
        })  # fmt: skip
        calls.append({
            "type": "track", "messageId": f"tr-{p}", "timestamp": "2025-03-01T10:00:01Z",
            "userId": f"patient-{p}", "event": "Appointment Booked",
            "context": {**context, "traits": {"email": f"p{p}@example.com", **PHI}},
            "properties": {"order_id": f"o-{p}", "revenue": 40, "client_ip": IP, **PHI},
        })  # fmt: skip
        calls.append({
            "type": "page", "messageId": f"pg-{p}", "timestamp": "2025-03-01T10:00:02Z",
            "userId": f"patient-{p}", "name": "Booking", "context": context,
            "properties": {"url": URL, "title": PHI["diagnosis"]},
        })  # fmt: skip
    # refused by mapping (before 1990): dead-lettered, with PHI in the original
    calls.append({
        "type": "track", "messageId": "old-1", "timestamp": "1980-01-01T00:00:00Z",
        "userId": "patient-0", "event": "Appointment Booked",
        "context": {"ip": IP}, "properties": {"order_id": "o-old", **PHI},
    })  # fmt: skip
    return calls


async def test_no_phi_reaches_klaviyo_logs_metrics_or_dead_letters(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    policy = write_yaml(tmp_path, "hipaa.yaml", {
        "allowed_properties": ["order_id", "revenue", "client_ip"],
        "allowed_traits": ["email", "firstName"],
        "allowed_context": ["locale"],
    })  # fmt: skip
    topic = topic_factory(partitions=2)
    calls = corpus()
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(  # undecodable, with PHI in value, key and headers
        topic, value=b"\xc3\x01garbage " + PHI["ssn"].encode(), key=RAW_KEY,
        headers=[("note", b"PHI-HEADER")],
    )  # fmt: skip
    producer.flush(10)

    log_output = io.StringIO()
    root = logging.getLogger()
    previous_level = root.level
    configure_logging("DEBUG", log_output)
    try:
        async with SandboxServer(SandboxConfig()) as sandbox:
            settings = service_settings(
                kafka_bootstrap, topic, sandbox.url, hipaa_mode=True, hipaa_config_file=policy,
                log_level="DEBUG",
            )  # fmt: skip

            async def done() -> bool:
                events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
                profiles = (await sandbox_get(sandbox.url, "/sandbox/profiles"))["profiles"]
                return len(events) == 2 * PERSONS and len(profiles) == PERSONS

            async with running_service(settings) as service:
                await wait_until(done, timeout=120, what="every allowed event and profile")
                dead = read_topic(kafka_bootstrap, settings.dlq_topic, 2)
            requests = (await sandbox_get(sandbox.url, "/sandbox/requests"))["requests"]
            stored = [
                await sandbox_get(sandbox.url, "/sandbox/events"),
                await sandbox_get(sandbox.url, "/sandbox/profiles"),
            ]
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "klaviyo-stream-json"]:
            root.removeHandler(handler)
        root.setLevel(previous_level)

    assert service.result.dead_lettered == 2 and len(dead) == 2
    # what was allowed did arrive
    sent = orjson.dumps(requests).decode()
    assert "o-7" in sent and "p7@example.com" in sent and '"first_name":"Pat"' in sent
    # and nothing else, anywhere
    logs = log_output.getvalue()
    assert "dead-lettered" in logs  # the log capture saw the service's lines
    dead_text = "".join(repr((m.key(), m.value(), m.headers())) for m in dead)
    places = {
        "sandbox requests": sent,
        "sandbox store": orjson.dumps(stored).decode(),
        "logs": logs,
        "metrics": generate_latest(metrics.REGISTRY).decode(),
        "dead letters": dead_text,
    }
    for place, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {place}"
    # dead letters: redacted copies, marked, with the reason kept
    by_stage = {dict(m.headers())["dlq.stage"].decode(): m for m in dead}
    assert set(by_stage) == {"decode", "map"}
    assert all(dict(m.headers())["dlq.redacted"] == b"hipaa" for m in dead)
    assert by_stage["decode"].value() is None and by_stage["decode"].key() is None
    redacted = orjson.loads(by_stage["map"].value())
    assert redacted["messageId"] == "old-1"
    assert redacted["properties"] == {"order_id": "o-old"}


async def test_held_anonymous_calls_are_stored_filtered_never_as_the_raw_record(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """An anonymous call waits in the state store for up to an hour: in HIPAA mode it waits as
    the filtered call, never as the original record with its PHI; released, it is sent as the
    filter allows."""
    import sqlite3

    policy = write_yaml(tmp_path, "hipaa.yaml", {
        "allowed_properties": ["order_id"], "allowed_traits": ["email"],
    })  # fmt: skip
    topic = topic_factory(partitions=1)
    anonymous = {
        "type": "track", "messageId": "anon-1", "timestamp": "2025-03-01T10:00:01Z",
        "anonymousId": "visitor-1", "event": "Appointment Booked",
        "context": {"ip": IP, "userAgent": USER_AGENT, "page": {"url": URL}},
        "properties": {"order_id": "o-anon", **PHI},
    }  # fmt: skip
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, Encoder().encode(anonymous), key=RAW_KEY,
                     headers=[("note", b"PHI-HEADER")])  # fmt: skip
    producer.flush(10)
    state = tmp_path / "state.db"
    async with SandboxServer(SandboxConfig()) as sandbox:
        settings = service_settings(
            kafka_bootstrap, topic, sandbox.url, hipaa_mode=True, hipaa_config_file=policy,
            state_url=f"sqlite:///{state}",
        )  # fmt: skip
        async with running_service(settings):

            async def held() -> bool:
                with sqlite3.connect(state) as db:
                    return bool(db.execute("SELECT count(*) FROM held").fetchone()[0])

            await wait_until(held, timeout=60, what="the anonymous call held")
            with sqlite3.connect(state) as db:
                payloads = [bytes(row[0]) for row in db.execute("SELECT payload FROM held")]
            publish({"bootstrap.servers": kafka_bootstrap}, topic, [{
                "type": "identify", "messageId": "id-1", "timestamp": "2025-03-01T10:00:02Z",
                "userId": "patient-1", "anonymousId": "visitor-1",
                "traits": {"email": "p1@example.com"},
            }], Encoder())  # fmt: skip

            async def released() -> bool:
                events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
                return len(events) == 1

            await wait_until(released, timeout=60, what="the held call released and sent")
        [event] = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
    stored = b"".join(payloads)
    for payload in payloads:  # the record's key, value and headers are stored base64-encoded
        raw = orjson.loads(payload)
        for field in (raw.get("key"), raw.get("value"), *(v for _, v in raw.get("headers") or ())):
            if field:
                stored += base64.b64decode(field)
    text = stored.decode(errors="replace")
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} stored in the state store"
    assert "o-anon" in text  # the filtered call is there
    assert event["properties"] == {"order_id": "o-anon"}
