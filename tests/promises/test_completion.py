"""The completion ledger's promises, case by case, each through the real broker.

Every test runs the service as a real process (`python -m stream run`) against the real Kafka
broker and the Klaviyo sandbox, and judges it from outside: what the sandbox stored, what the
group committed, what the dead-letter topic holds. The sandbox can hold requests unanswered
(`/sandbox/faults {"hold": true}`): Klaviyo is slow at will, and a request whose client died
while it was held is never applied, as with a real outage.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Producer

from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder
from tests.support import free_port, read_topic, sandbox_get, wait_until
from tests.support.harness import (
    ServiceProcess,
    committed_lag,
    create_topic,
    metric,
    service_env,
    state_dir,
    stats,
    topic_size,
)
from tests.support.redis import StoppableRedis
from tests.support.registry import Registry
from tests.support.sandbox import faults, waiting_requests

ENCODER = Encoder()
OUTAGE_SECONDS = 20  # the registry's outage in case 7
NOW = datetime.now(UTC).replace(microsecond=0)


def at(seconds: int) -> str:
    return (NOW - timedelta(hours=1) + timedelta(seconds=seconds)).isoformat()


def track(n: int, user: str | None = None, anonymous: str | None = None, **props: Any) -> dict:
    call: dict[str, Any] = {
        "type": "track",
        "messageId": f"t-{n}-{uuid.uuid4()}",
        "timestamp": at(n),
        "event": "Viewed Product",
        "properties": {"n": n, **props},
    }
    if user:
        call["userId"] = user
        call["context"] = {"traits": {"email": f"{user}@example.com"}}
    if anonymous:
        call["anonymousId"] = anonymous
    return call


def identify(n: int, user: str, anonymous: str | None = None, **traits: Any) -> dict:
    call: dict[str, Any] = {
        "type": "identify",
        "messageId": f"i-{n}-{uuid.uuid4()}",
        "timestamp": at(n),
        "userId": user,
        "traits": {"email": f"{user}@example.com", **traits},
    }
    if anonymous:
        call["anonymousId"] = anonymous
    return call


def page(n: int, user: str) -> dict:
    return {"type": "page", "messageId": f"p-{n}-{uuid.uuid4()}", "timestamp": at(n),
            "userId": user, "name": "Home", "properties": {"n": n}}  # fmt: skip


def publish_values(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Publish encoded record values to partition 0, in order, and wait for the broker's acks."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0


def produce(bootstrap: str, topic: str, calls: list[dict], partition: int = 0) -> None:
    """Publish `calls` to one partition, in order, and wait for the broker's acks."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for call in calls:
        producer.produce(topic, ENCODER.encode(call), partition=partition)
    assert producer.flush(30) == 0


async def events_by_id(url: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event in (await sandbox_get(url, "/sandbox/events"))["events"]:
        out.setdefault(event["unique_id"], []).append(event)
    return out


async def profile_of(url: str, email: str) -> dict[str, Any]:
    [profile] = [
        p
        for p in (await sandbox_get(url, "/sandbox/profiles"))["profiles"]
        if p["attributes"].get("email") == email
    ]
    return profile


def finished(service: ServiceProcess, bootstrap: str, topic: str) -> Any:
    async def done() -> bool:
        assert service.alive, service.log()[-3000:]
        return committed_lag(bootstrap, f"group-{topic}", topic) == 0

    return done


# 2 ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("release", ["identified", "expired_sent"])
async def test_case2_released_held_calls_survive_a_crash_before_klaviyo_accepts_them(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, release: str
) -> None:
    """Held calls' own offsets were committed when they were held. Once released (an identify
    names their person, or they expire with EXPIRED_ANONYMOUS=send) they must stay durable
    until Klaviyo accepted them: a SIGKILL right after the release loses none of them."""
    topic = topic_factory(partitions=1)
    held = [track(n, anonymous="anon-7") for n in range(3)]
    produce(kafka_bootstrap, topic, held)
    # the broker's shortest session timeout: the killed member's partition moves to its
    # successor 6 s after the kill instead of librdkafka's default 45 s
    extra: dict[str, Any] = {"held_lease_seconds": 2, "kafka_config_session_timeout_ms": 6000}
    if release == "expired_sent":
        extra.update(expired_anonymous="send", hold_anonymous_seconds=1)
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir(), **extra)
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:
            await wait_until(
                finished(service, kafka_bootstrap, topic), timeout=60, what="calls held"
            )
            assert (await stats(sandbox.url))["events"] == 0, "anonymous calls were sent"
            await faults(sandbox.url, hold=True)
            if release == "identified":
                produce(kafka_bootstrap, topic, [identify(10, "ann", anonymous="anon-7")])

            async def released() -> bool:
                assert service.alive, service.log()[-3000:]
                return await waiting_requests(sandbox.url) >= 1

            await wait_until(released, timeout=60, what="the released calls in flight")
            service.kill()  # SIGKILL: nothing flushed, nothing committed
            await faults(sandbox.url, hold=False)
            service.start()

            async def delivered() -> bool:
                assert service.alive, service.log()[-3000:]
                return len(await events_by_id(sandbox.url)) >= len(held)

            await wait_until(delivered, timeout=90, what="the released calls after the crash")
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=60, what="commit")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        stored = await events_by_id(sandbox.url)
        if release == "identified":
            ann = await profile_of(sandbox.url, "ann@example.com")
    assert set(stored) == {c["messageId"] for c in held}
    assert all(len(copies) == 1 for copies in stored.values())
    if release == "identified":
        assert {e["profile_id"] for copies in stored.values() for e in copies} == {ann["id"]}
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0


# 3 ----------------------------------------------------------------------------------------------


async def test_case3_a_held_event_over_klaviyo_limits_is_dead_lettered_before_it_is_held(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """An anonymous event Klaviyo would refuse (a 150 KB string) is a dead letter at once; the
    person's other held events and their identify are not dragged down with it."""
    topic = topic_factory(partitions=1)
    oversized = track(1, anonymous="anon-3", note="x" * 150_000)
    fine = track(2, anonymous="anon-3")
    name = identify(3, "bea", anonymous="anon-3")
    produce(kafka_bootstrap, topic, [oversized, fine, name])
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir())
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:

            async def delivered() -> bool:
                assert service.alive, service.log()[-3000:]
                return fine["messageId"] in await events_by_id(sandbox.url)

            await wait_until(delivered, timeout=60, what="the fine held event delivered")
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=60, what="commit")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        bea = await profile_of(sandbox.url, "bea@example.com")
        stored = await events_by_id(sandbox.url)
    assert set(stored) == {fine["messageId"]}
    assert stored[fine["messageId"]][0]["profile_id"] == bea["id"]
    [letter] = read_topic(kafka_bootstrap, f"{topic}-dlq", 1)
    headers = dict(letter.headers())
    assert letter.offset() == 0 or headers["dlq.original.offset"] == b"0"
    assert b"100 KB" in headers["dlq.error.message"]


# 4 ----------------------------------------------------------------------------------------------


EDGE = "0001-01-01T00:00:00+14:00"  # before year 1 in UTC


def poison() -> list[tuple[str, bytes]]:
    """Records built to hurt, each with a substring its dead letter's reason must have."""
    deep = "[" * 300 + "1" + "]" * 300
    crafted = "a@" + "a." * 32_000 + "@"
    calls = [
        ("cannot be encoded", {**track(900, user="p1"), "properties": '{"deep": ' + deep + "}"}),
        ("outside the calendar", {**track(901, user="p2"), "timestamp": EDGE}),
        # the only name of its person: a dead letter (with a userId, only the field is dropped)
        ("longer than 254", {**identify(902, "p3"), "userId": None, "anonymousId": "a-3",
                             "traits": {"email": crafted}}),  # fmt: skip
    ]
    return [(reason, ENCODER.encode(call)) for reason, call in calls]


async def test_case4_records_built_to_hurt_are_dead_letters_and_the_service_goes_on(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    good = [track(n, user="ok") for n in range(5)]
    bad = poison()
    produce(kafka_bootstrap, topic, good[:2])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for _reason, value in bad:
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0
    produce(kafka_bootstrap, topic, good[2:])
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir())
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=90, what="all")
            assert service.terminate() == 0, service.log()[-3000:]
        finally:
            service.stop_quietly()
        stored = await events_by_id(sandbox.url)
    assert set(stored) == {c["messageId"] for c in good}
    letters = read_topic(kafka_bootstrap, f"{topic}-dlq", len(bad))
    reasons = sorted(dict(m.headers())["dlq.error.message"].decode() for m in letters)
    assert len(reasons) == len(bad)
    for expected, _ in bad:
        assert any(expected in reason for reason in reasons), (expected, reasons)


# 5 ----------------------------------------------------------------------------------------------


async def test_case5_one_profile_upsert_per_person_in_flight_and_the_newest_lands_last(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """While a person's upsert waits for Klaviyo's answer, their next snapshot is not sent
    beside it (it could land first and be overwritten by the older one): it waits, replacing
    any older snapshot queued behind it, and goes once the answer is in."""
    topic = topic_factory(partitions=1)
    port = free_port()
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir(), metrics_port=port)
        service = ServiceProcess(env, tmp_path / "service.log")
        await faults(sandbox.url, hold=True)
        service.start()
        try:
            produce(kafka_bootstrap, topic, [identify(1, "cy", plan="free")])

            async def first_held() -> bool:
                assert service.alive, service.log()[-3000:]
                return await waiting_requests(sandbox.url) == 1

            await wait_until(first_held, timeout=60, what="the first upsert in flight")
            produce(kafka_bootstrap, topic, [identify(2, "cy", plan="pro")])
            produce(kafka_bootstrap, topic, [identify(3, "cy", plan="enterprise")])

            async def parked() -> bool:
                consumed = await metric(port, "klaviyo_stream_records_consumed_total")
                waiting = await metric(port, "klaviyo_stream_items_waiting", kind="profiles")
                return consumed >= 3 and waiting == 1

            await wait_until(parked, timeout=60, what="the newer snapshots parked as one")
            assert await waiting_requests(sandbox.url) == 1, "a second upsert of one person"
            await faults(sandbox.url, hold=False)
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=60, what="all")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        cy = await profile_of(sandbox.url, "cy@example.com")
        requests = (await sandbox_get(sandbox.url, "/sandbox/requests"))["requests"]
    upserts = [r for r in requests if r["path"] == "/api/profile-import"]
    assert len(upserts) == 2, "the two newer snapshots must have gone as one, the newest"
    assert cy["properties"]["plan"] == "enterprise"


# 6 ----------------------------------------------------------------------------------------------


async def test_case6_a_dead_letter_too_large_even_without_its_value_still_finishes_its_record(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """A record whose headers alone exceed the dead-letter topic's limit: written without its
    value and headers (the dlq.* headers still point at it), and its partition moves on."""
    topic = topic_factory(partitions=1)
    create_topic(kafka_bootstrap, f"{topic}-dlq", 1, **{"max.message.bytes": "20000"})
    bad = {**track(1, user="h"), "timestamp": "not a time"}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, ENCODER.encode(bad), partition=0, headers=[("trace", b"z" * 30_000)])
    assert producer.flush(30) == 0
    good = [track(n, user="h") for n in range(2, 5)]
    produce(kafka_bootstrap, topic, good)
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir())
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=90, what="all")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        stored = await events_by_id(sandbox.url)
    assert set(stored) == {c["messageId"] for c in good}
    [letter] = read_topic(kafka_bootstrap, f"{topic}-dlq", 1)
    headers = dict(letter.headers())
    assert letter.value() is None and "trace" not in headers
    assert b"1 original headers" in headers["dlq.headers.omitted"]
    assert headers["dlq.original.offset"] == b"0"


async def test_case6_a_state_store_outage_waits_shows_a_stalled_partition_and_loses_nothing(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, stoppable_redis: StoppableRedis
) -> None:
    """Redis goes away mid-run: the service neither stops nor dead-letters; it waits, its
    partition shows as stalled (metric, and /readyz after READY_STALL_SECONDS), and once Redis
    is back every record is delivered once."""
    topic = topic_factory(partitions=1)
    before = [identify(1, "dee")] + [track(n, user="dee") for n in range(2, 6)]
    during = [identify(10, "eve")] + [track(n, user="eve") for n in range(11, 15)]
    produce(kafka_bootstrap, topic, before)
    port = free_port()
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(),
            state_url=stoppable_redis.url, metrics_port=port, ready_stall_seconds=1,
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=60, what="before")
            stoppable_redis.stop()
            produce(kafka_bootstrap, topic, during)

            async def stalled() -> bool:
                assert service.alive, service.log()[-3000:]
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/readyz") as resp,
                ):
                    body = await resp.json()
                return resp.status == 503 and "partition stalled" in body.get("failing", [])

            await wait_until(stalled, timeout=60, what="readiness failing on the stall")
            assert await metric(port, "klaviyo_stream_dependency_errors_total") > 0
            assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
            stoppable_redis.start()
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=90, what="after")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        stored = await events_by_id(sandbox.url)
    expected = {c["messageId"] for c in before + during if c["type"] == "track"}
    assert set(stored) == expected and all(len(v) == 1 for v in stored.values())
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0


# 7 ----------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_case7_a_schema_registry_outage_is_waited_out_only_an_unknown_id_is_a_dead_letter(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, registry: Registry
) -> None:
    """The real registry (Apicurio) stopped for 20 s mid-stream, while records arrive whose
    schema the service has not fetched yet: it waits (nothing dead-lettered), then delivers
    them all once the registry is back. A record naming an id the registry does not know is
    the one dead letter, with the registry's words."""
    topic = topic_factory(partitions=1)
    before = [identify(1, "fay")] + [track(n, user="fay") for n in range(2, 6)]
    during = [page(n, user="fay") for n in range(10, 15)]  # the page schema: not fetched yet
    with registry.client("writer") as client:
        encoder = Encoder(registry=client, topic=topic)
        early, late = [encoder.encode(c) for c in before], [encoder.encode(c) for c in during]
    unknown = b"\x00" + (987_654_321).to_bytes(4, "big") + b"\x02"
    publish_values(kafka_bootstrap, topic, early)
    port = free_port()
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), metrics_port=port,
            **registry.settings(),
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=60, what="before")
            stopped = time.monotonic()
            registry.server.stop()
            publish_values(kafka_bootstrap, topic, [*late, unknown])

            async def waiting_it_out() -> bool:
                assert service.alive, service.log()[-3000:]
                errors = await metric(port, "klaviyo_stream_dependency_errors_total",
                                      dependency="schema registry")
                return errors >= 3

            await wait_until(waiting_it_out, timeout=30, what="the service asking again")
            await asyncio.sleep(max(0.0, stopped + OUTAGE_SECONDS - time.monotonic()))  # the outage
            assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0, "an outage made dead letters"
            assert int((await stats(sandbox.url))["events"]) == 4  # the tracks before it only
            registry.server.start()
            await wait_until(finished(service, kafka_bootstrap, topic), timeout=90, what="all")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
            registry.ensure_running()
        stored = await events_by_id(sandbox.url)
    expected = {c["messageId"] for c in before + during if c["type"] in ("track", "page")}
    assert set(stored) == expected and all(len(v) == 1 for v in stored.values())
    [letter] = read_topic(kafka_bootstrap, f"{topic}-dlq", 1)
    assert dict(letter.headers())["dlq.error.message"] == (
        b"unknown schema id 987654321: No content with ID '987654321' was found."
    )


# 8 ----------------------------------------------------------------------------------------------


async def test_case8_a_revision_klaviyo_refuses_stops_the_service_and_dead_letters_nothing(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """A well-formed date that is not one of Klaviyo's revisions passes every check at start;
    Klaviyo then answers 400 naming the revision header for every request. That is a
    configuration error: one line, exit 2, nothing dead-lettered, nothing committed."""
    topic = topic_factory(partitions=1)
    calls = [identify(1, "gus")] + [track(n, user="gus") for n in range(2, 8)]
    produce(kafka_bootstrap, topic, calls)
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), klaviyo_revision="2026-03-03"
        )
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:
            code = service.wait(timeout=60)
        finally:
            service.stop_quietly()
    assert code == 2, service.log()[-3000:]
    last = service.log().strip().splitlines()[-1]
    assert "KLAVIYO_REVISION" in last and "Traceback" not in service.log()
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    assert committed_lag(kafka_bootstrap, f"group-{topic}", topic) == len(calls)
