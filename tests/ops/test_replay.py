"""`klaviyo-stream dlq replay`: chosen dead letters go back to their topic and are delivered
as backfill; the others stay where they are.

Dead letters are written the way the service writes them (original key, value and headers plus
`dlq.*`), with different reasons and last-attempt times. The replay, run as the real CLI,
must pick exactly the ones its filter names, strip the `dlq.*` headers, add the backfill
header, and the service must then deliver those events with `backfill: true`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from stream.completion.deadletter import DeadLetter
from stream.core.calls import Record
from stream.core.errors import InvalidRequest, KlaviyoServerError
from stream.klaviyo.mapping import BACKFILL_HEADER
from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.ops.produce import key_of
from tests.support import read_topic, running_service, sandbox_get, service_settings, wait_until
from tests.support.corpus import encode
from tests.support.harness import service_env, stats, topic_size

DAY = 86_400.0
T0 = 1_780_000_000.0  # dead letters' last attempts: T0 (outage) and T0 + 2 days (later outage)


def _dead_letters(bootstrap: str, topic: str, calls: list[dict[str, Any]]) -> dict[str, str]:
    """Write one dead letter per call; returns messageId → which group it belongs to."""
    producer = Producer({"bootstrap.servers": bootstrap})
    groups: dict[str, str] = {}
    for n, call in enumerate(calls):
        kind = ("outage", "outage-later", "refused")[n % 3]
        error: Exception = (
            InvalidRequest("Klaviyo 400 invalid: bad", 400)
            if kind == "refused"
            else KlaviyoServerError("Klaviyo 503 service_unavailable: down", 503)
        )
        source = Record(topic, 0, n, key_of(call), encode(call), [("trace", b"t-%d" % n)])
        headers = [
            (name, value)
            for name, value in DeadLetter(source, error, "deliver", 12, T0).headers()
            if name != "dlq.last.attempt.time"
        ]
        when = T0 + (2 * DAY if kind == "outage-later" else 0)
        headers.append(("dlq.last.attempt.time", str(when).encode()))
        producer.produce(
            f"{topic}-dlq",
            value=source.value,
            key=source.key,
            headers=[*(source.headers or []), *headers],
        )
        groups[call["messageId"]] = kind
    assert producer.flush(30) == 0
    return groups


async def test_replay_chosen_dead_letters_as_backfill(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    calls = [c for c in sample_calls(400, seed=51, persons=10) if c["type"] == "track"][:60]
    identifies = [c for c in sample_calls(400, seed=51, persons=10) if c["type"] == "identify"]
    groups = _dead_letters(kafka_bootstrap, topic, calls)
    wanted = {m for m, kind in groups.items() if kind == "outage"}

    env = service_env(kafka_bootstrap, topic, "http://unused", tmp_path)
    replay = subprocess.run(
        [
            sys.executable, "-m", "stream", "dlq", "replay",
            "--reason", "ServerError",
            "--since", "2026-05-01",  # before T0
            "--until", str(T0 + DAY),  # before the later outage
        ],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert f"replayed {len(wanted)} of {len(calls)} dead letters" in replay.stdout
    assert "100%" in replay.stderr  # the progress bar ran to its end
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == len(calls), "dead letters stay"

    back = read_topic(kafka_bootstrap, topic, len(wanted))
    assert len(back) == len(wanted) == topic_size(kafka_bootstrap, topic)
    for message in back:
        headers = dict(message.headers() or [])
        assert headers[BACKFILL_HEADER] == b"1"
        assert headers["trace"].startswith(b"t-"), "original headers kept"
        assert not [h for h in headers if h.startswith("dlq.")]

    # the service delivers them, flagged as backfill (no flows fire for old events)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for call in identifies:
        producer.produce(topic, value=encode(call), key=key_of(call))
    assert producer.flush(30) == 0
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        settings = service_settings(kafka_bootstrap, topic, sandbox.url)

        async def arrived() -> bool:
            return int((await stats(sandbox.url))["events"]) >= len(wanted)

        async with running_service(settings):
            await wait_until(arrived, timeout=120, what="replayed events")
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
    assert {e["unique_id"] for e in events} == wanted
    assert all(e["backfill"] is True for e in events)


async def test_dry_run_counts_and_publishes_nothing(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    calls = [c for c in sample_calls(100, seed=52, persons=5) if c["type"] == "track"][:9]
    _dead_letters(kafka_bootstrap, topic, calls)
    env = service_env(kafka_bootstrap, topic, "http://unused", tmp_path)
    replay = subprocess.run(
        [sys.executable, "-m", "stream", "dlq", "replay", "--reason", "invalid", "--dry-run",
         "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert "would replay 3 of 9 dead letters (6 not chosen)" in replay.stdout
    assert topic_size(kafka_bootstrap, topic) == 0
