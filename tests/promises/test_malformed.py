"""Bad input never stops the service, and secrets never leave it.

A corpus of 25 kinds of malformed records (tests/support/corpus.py) interleaved with 2,000
good calls: every bad record lands in the dead-letter topic once, with its original key, value
and headers, the right stage and a reason a person understands; every good call is delivered
exactly once. The same run is then searched for the API key: logs (DEBUG), dead letters
(values and headers) and the /metrics page must not contain it, nor must the crash report of
a run whose key Klaviyo refuses. A second corpus covers the Schema Registry wire format.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from stream.intake.decode import RegistryDecoder
from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxServer, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import read_topic, running_service, service_settings, wait_until
from tests.support.corpus import HEARTBEAT_SCHEMA, KIND_HEADER, bad_records, interleave
from tests.support.harness import (
    ServiceProcess,
    assert_exactly_once,
    committed_lag,
    create_topic,
    expected_of,
    service_env,
    state_dir,
    stats,
    topic_size,
)

GOOD = 2_000
BIG = str(8 * 1024 * 1024)  # the topic takes the oversized record; Klaviyo must refuse it


def _produce(bootstrap: str, topic: str, records: Any) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": BIG})
    for key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers)
        producer.poll(0)
    assert producer.flush(60) == 0


def _headers(message: Any) -> dict[str, bytes]:
    return {k: v for k, v in message.headers() or []}


async def test_malformed_corpus_dead_lettered_with_reasons_and_no_secret_anywhere(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    secret = f"pk_{uuid.uuid4().hex}"
    topic = create_topic(
        kafka_bootstrap, f"malformed-{uuid.uuid4().hex[:8]}", 3, **{"max.message.bytes": BIG}
    )
    good = list(sample_calls(GOOD, seed=41, persons=100))
    bad = bad_records()
    assert len({b.kind for b in bad}) >= 20
    _produce(kafka_bootstrap, topic, interleave(good, bad))
    events, _profiles = expected_of(good)
    dlq = f"{topic}-dlq"

    with SandboxThread(SandboxConfig(rate_limits=False, api_keys=(secret,))) as sandbox:
        env = service_env(
            kafka_bootstrap,
            topic,
            sandbox.url,
            state_dir(),
            klaviyo_api_key=secret,
            log_level="DEBUG",
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        try:
            service.start()

            async def finished() -> bool:
                assert service.alive, service.log()[-3000:]
                return (
                    int((await stats(sandbox.url))["events"]) >= len(events)
                    and topic_size(kafka_bootstrap, dlq) >= len(bad)
                    and committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0
                )

            await wait_until(finished, timeout=300, what="good delivered, bad dead-lettered")
            port = re.findall(r'"msg": "metrics", "port": (\d+)', service.log())[-1]
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                metrics_page = await resp.text()
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        await assert_exactly_once(sandbox.url, good)

    letters = read_topic(kafka_bootstrap, dlq, len(bad))
    assert topic_size(kafka_bootstrap, dlq) == len(bad)
    by_kind = {r.kind: r for r in bad}
    seen = Counter(_headers(m)[KIND_HEADER].decode() for m in letters)
    assert seen == Counter(r.kind for r in bad), "each bad record dead-lettered once"
    for message in letters:
        headers = _headers(message)
        record = by_kind[headers[KIND_HEADER].decode()]
        reason = headers["dlq.error.message"].decode()
        assert record.reason.lower() in reason.lower(), (record.kind, reason)
        assert headers["dlq.stage"].decode() == record.stage, (record.kind, headers["dlq.stage"])
        if "dlq.value.omitted" in headers:  # over the dead-letter topic's size limit
            assert message.value() is None and len(record.value or b"") > 1_000_000
        else:
            assert message.value() == record.value, record.kind
        assert message.key() == b"corpus-user"
        assert headers["dlq.original.topic"].decode() == topic
        for name in (
            "original.partition",
            "original.offset",
            "attempts",
            "error.class",
            "first.attempt.time",
            "last.attempt.time",
        ):
            assert f"dlq.{name}" in headers, (record.kind, name)
        if record.stage == "deliver":
            assert headers.get("dlq.klaviyo.code"), record.kind

    # the secret: not in the logs, the dead letters or the metrics
    log = service.log()
    assert "dead-lettered" in log and '"level": "DEBUG"' in log  # the log is not empty
    assert secret not in log
    assert secret not in metrics_page
    for message in letters:
        assert secret.encode() not in (message.value() or b"")
        assert all(secret.encode() not in (v or b"") for _, v in message.headers() or [])


async def test_a_refused_api_key_stops_the_service_without_showing_it(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    wrong = f"pk_{uuid.uuid4().hex}"
    topic = topic_factory(partitions=1)
    publish({"bootstrap.servers": kafka_bootstrap}, topic, sample_calls(20, seed=3), Encoder())
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(
            kafka_bootstrap,
            topic,
            sandbox.url,
            state_dir(),
            klaviyo_api_key=wrong,
            log_level="DEBUG",
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:
            assert service.wait(timeout=120) != 0
        finally:
            service.stop_quietly()
    output = service.log()
    assert "401" in output or "403" in output, output[-2000:]
    assert wrong not in output
    assert committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 20, "nothing skipped"


async def test_schema_registry_corpus_dead_lettered_with_reasons(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://malformed"})
    topic = topic_factory(partitions=1)
    encoder = Encoder(registry=registry, topic=topic)
    good = list(sample_calls(200, seed=43, persons=20))
    heartbeat_id = registry.register_schema(
        f"{topic}-heartbeat", Schema(str(HEARTBEAT_SCHEMA).replace("'", '"'), "AVRO")
    )
    mismatch = (
        '{"type": "record", "name": "Track", "namespace": "io.klaviyostream.calls", '
        '"fields": [{"name": "messageId", "type": "long"}]}'
    )
    mismatch_id = registry.register_schema(f"{topic}-track-v9", Schema(mismatch, "AVRO"))
    cases = {
        "registry wrong magic byte": (b"\x01\x00\x00\x00\x01abc", "wrong magic byte"),
        "registry unknown schema id": (b"\x00\x00\x00\x7f\xff\x02", "unknown schema id"),
        "registry unknown call type": (
            bytes([0]) + heartbeat_id.to_bytes(4, "big") + b"\x02a\x02b",
            "is not one of our calls",
        ),
        "registry schema mismatch": (
            bytes([0]) + mismatch_id.to_bytes(4, "big") + b"\x02",
            "Avro body",
        ),
    }
    records = [(None, encoder.encode(c), []) for c in good]
    records[10:10] = [(None, v, [(KIND_HEADER, k.encode())]) for k, (v, _) in cases.items()]
    _produce(kafka_bootstrap, topic, records)
    events, _profiles = expected_of(good)
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)

        async def finished() -> bool:
            return int((await stats(sandbox.url))["events"]) >= len(events) and topic_size(
                kafka_bootstrap, settings.dlq_topic
            ) >= len(cases)

        async with running_service(settings, RegistryDecoder(registry)):
            await wait_until(finished, timeout=120, what="good delivered, bad dead-lettered")
        await assert_exactly_once(sandbox.url, good)
    letters = read_topic(kafka_bootstrap, settings.dlq_topic, len(cases))
    assert len(letters) == len(cases)
    for message in letters:
        headers = _headers(message)
        _value, reason = cases[headers[KIND_HEADER].decode()]
        assert reason in headers["dlq.error.message"].decode(), headers["dlq.error.message"]
