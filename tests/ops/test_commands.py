"""The operator commands against the real broker, the sandbox and a password-protected Redis:
`doctor`, `status`, `dlq list`, `dlq show`, a refused key at run time, and JSON-only stderr
while librdkafka reports broker errors."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.completion.deadletter import DeadLetter, DeadLetters
from stream.core.calls import Record
from stream.core.errors import DecodeError, InvalidRequest, MappingError
from stream.core.settings import SANDBOX_API_KEY
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.local.sandbox.config import REVISIONS
from stream.ops.produce import Encoder
from tests.support import poll_until
from tests.support.cli import clean_env, cli
from tests.support.harness import committed_lag
from tests.support.redis import REDIS_PASSWORD

WRONG_KEY = "pk_wrong_" + "Z" * 30
RETIRING = date.today() - timedelta(days=2 * 365 - 30)  # a revision retiring in about 30 days


@pytest.fixture(scope="module")
def sandbox() -> Any:
    # also accepts the revision retiring in about 30 days that the warning test pins
    config = SandboxConfig(rate_limits=False, revisions=(*REVISIONS, RETIRING.isoformat()))
    with SandboxThread(config) as server:
        yield server


def env_for(bootstrap: str, topic: str, sandbox_url: str, **extra: Any) -> dict[str, str]:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topics": topic,
        "kafka_group_id": f"group-{topic}",
        "dlq_topic": f"{topic}-dlq",
        "klaviyo_base_url": sandbox_url,
        "klaviyo_api_key": SANDBOX_API_KEY,
        "metrics_port": 0,
    }
    values.update(extra)
    return clean_env(**values)


def test_doctor_passes_then_names_a_refused_key_and_a_missing_topic(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=3)
    topic_factory(partitions=1, prefix=f"{topic}-dlq-x")  # decoy: not the DLQ
    env = env_for(kafka_bootstrap, topic, sandbox.url, state_url=f"sqlite:///{tmp_path}/s.db")
    missing_dlq = cli(env, "doctor")
    assert missing_dlq.code == 1
    assert f"✗ dead-letter topic {topic}-dlq: does not exist" in missing_dlq.stdout

    env["DLQ_TOPIC"] = topic_factory(partitions=2)
    ok = cli(env, "doctor")
    assert ok.code == 0, ok.output
    lines = ok.stdout.splitlines()
    assert all(line.startswith("✓") for line in lines[:-1]), ok.stdout
    assert f"✓ topic {topic}: 3 partitions" in lines
    assert f"✓ dead-letter topic {env['DLQ_TOPIC']}: writable, 2 partitions" in lines
    assert any(line.startswith("✓ klaviyo: ") and "API key accepted" in line for line in lines)
    assert any(line.startswith("✓ state store: SQLite") for line in lines)
    assert lines[-1] == "all checks passed"

    broken = {**env, "KLAVIYO_API_KEY": WRONG_KEY, "KAFKA_TOPICS": f"{topic},no-such-{topic}"}
    bad = cli(broken, "doctor")
    assert bad.code == 1
    failed = [line for line in bad.stdout.splitlines() if line.startswith("✗")]
    assert len(failed) == 2, bad.stdout
    assert failed[0].startswith(f"✗ topic no-such-{topic}: does not exist → fix: create it")
    assert failed[1].startswith("✗ klaviyo: API key refused (Klaviyo 401")
    assert "KLAVIYO_API_KEY" in failed[1]
    assert WRONG_KEY not in bad.output and "Traceback" not in bad.output


def _publish(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, value=f"r{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def test_status_lag_is_what_kafkas_own_offsets_say(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any
) -> None:
    topic = topic_factory(partitions=3)
    _publish(kafka_bootstrap, topic, {0: 7, 1: 4, 2: 5})
    env = env_for(kafka_bootstrap, topic, sandbox.url)
    group = env["KAFKA_GROUP_ID"]
    member = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "client.id": "status-test-member",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        member.subscribe([topic])
        deadline = time.monotonic() + 60
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        assert len(member.assignment()) == 3
        before = time.time()
        member.commit(
            offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 2, 1)],
            asynchronous=False,
        )
        after = time.time()
        ran = cli(env, "status", "--json")
        assert ran.code == 0, ran.output
        status = json.loads(ran.stdout)
    finally:
        member.close()
    by_partition = {p["partition"]: p for p in status["partitions"]}
    assert {k: v["committed"] for k, v in by_partition.items()} == {0: 5, 1: None, 2: 1}
    assert {k: v["end"] for k, v in by_partition.items()} == {0: 7, 1: 4, 2: 5}
    assert {k: v["lag"] for k, v in by_partition.items()} == {0: 2, 1: 4, 2: 4}
    assert status["lag"] == committed_lag(kafka_bootstrap, group, topic) == 10
    [only] = status["members"]
    assert only["client_id"] == "status-test-member"
    assert sorted(only["assignment"]) == [f"{topic}[{p}]" for p in range(3)]
    # the commit time is the broker's record of the commit, not our clock's guess
    assert before - 1 <= by_partition[0]["last_commit"] <= after + 1
    assert by_partition[1]["last_commit"] is None
    assert status["dlq_records"] is None  # no dead-letter topic yet
    text = cli(env, "status")
    assert text.code == 0 and f"group {group}: " in text.stdout and "lag 10" in text.stdout


async def _write_dead_letters(bootstrap: str, dlq: str, topic: str) -> None:
    letters = DeadLetters({"bootstrap.servers": bootstrap}, dlq)
    encoder = Encoder()
    call = {
        "type": "track",
        "messageId": "m-1",
        "timestamp": "2026-01-02T03:04:05Z",
        "userId": "u-1",
        "event": "Order Completed",
        "properties": {"diagnosis": "secret-phi", "total": 3},
    }
    try:
        for offset in range(3):
            source = Record(topic, 0, offset, b"u-1", b"\x07bad", [])
            await letters.send(DeadLetter(source, DecodeError("wrong magic bytes 07"), "decode"))
        source = Record(topic, 0, 3, b"u-1", encoder.encode(call), [("trace", b"t-1")])
        await letters.send(DeadLetter(source, MappingError("metric name too long"), "map"))
        for offset in (4, 5):
            source = Record(topic, 0, offset, b"u-1", encoder.encode(call), [])
            refused = InvalidRequest("Klaviyo 400 invalid: bad email", 400)
            await letters.send(DeadLetter(source, refused, "deliver"))
    finally:
        letters.close()


def test_groups_whose_java_hash_is_negative_are_found_where_the_broker_put_them(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """Kafka places a group's commits by `Math.abs(hashCode) % partitions`: for a negative hash
    that differs from the hash with its sign bit masked off. Groups with a negative hash have
    their commit time found (and `polygenelubricants`, whose hash is Integer.MIN_VALUE, is 0)."""
    from stream.ops.commits import coordinator_partition, java_string_hash, last_commit_times

    assert coordinator_partition("polygenelubricants", 3) == 0
    topic = topic_factory(partitions=1)
    # the first four names with a negative hash; masking would misplace three of them
    groups = [g for n in range(40) if java_string_hash(g := f"negative-hash-{n}") >> 31][:4]
    assert len(groups) == 4
    for group in groups:
        member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                           "enable.auto.commit": False})  # fmt: skip
        try:
            before = time.time()
            member.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
            after = time.time()
        finally:
            member.close()
        found = last_commit_times(
            {"bootstrap.servers": kafka_bootstrap}, group, timeout=30, wanted={(topic, 0)}
        )
        assert found is not None
        assert before - 1 <= found[(topic, 0)] <= after + 1, group


def test_a_commit_buried_under_other_groups_commits_is_still_found(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    """Every group's commits share the coordinator partitions: after ours, another group
    commits 2,500 times into the same partition. Reading back from the end in growing windows
    (whose fetches and end-of-partition events must not leak into the next window) finds ours."""
    from stream.ops.commits import coordinator_partition, last_commit_times

    topic = topic_factory(partitions=1)
    ours = f"buried-{topic}"
    target = coordinator_partition(ours, 3)  # the local broker's offsets.topic.num.partitions
    noisy = next(g for n in range(100) if coordinator_partition(g := f"noisy-{topic}-{n}", 3)
                 == target)  # fmt: skip

    def commit(group: str, times: int) -> float:
        member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                           "enable.auto.commit": False})  # fmt: skip
        try:
            for n in range(times):
                member.commit(offsets=[TopicPartition(topic, 0, n + 1)], asynchronous=False)
            return time.time()
        finally:
            member.close()

    before = time.time()
    committed = commit(ours, 1)
    commit(noisy, 2_500)
    found = last_commit_times(
        {"bootstrap.servers": kafka_bootstrap}, ours, timeout=30, wanted={(topic, 0)}
    )
    assert found is not None
    assert before - 1 <= found[(topic, 0)] <= committed + 1


def test_dlq_list_counts_by_stage_and_reason_and_show_decodes_one(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any
) -> None:
    topic = topic_factory(partitions=1)
    dlq = topic_factory(partitions=1, prefix=f"{topic}-dlq")
    asyncio.run(_write_dead_letters(kafka_bootstrap, dlq, topic))
    env = env_for(kafka_bootstrap, topic, sandbox.url, dlq_topic=dlq)

    listed = cli(env, "dlq", "list", "--json")
    assert listed.code == 0, listed.output
    document = json.loads(listed.stdout)
    counts = {(g["stage"], g["reason"]): g["count"] for g in document["groups"]}
    assert counts == {("decode", "DecodeError"): 3, ("map", "MappingError"): 1,
                      ("deliver", "InvalidRequest"): 2}
    assert document["read"] == 6
    newest = [g["newest"] for g in document["groups"]]
    assert newest == sorted(newest, reverse=True)  # newest first
    assert document["groups"][0]["stage"] == "deliver"

    chosen = json.loads(cli(env, "dlq", "list", "--json", "--reason", "email").stdout)
    assert [(g["stage"], g["count"]) for g in chosen["groups"]] == [("deliver", 2)]
    future = json.loads(cli(env, "dlq", "list", "--json", "--since", "2999-01-01").stdout)
    assert future["groups"] == [] and future["read"] == 6
    table = cli(env, "dlq", "list")
    assert table.stdout.splitlines()[0] == f"6 dead letters chosen of 6 in {dlq}"

    shown = cli(env, "dlq", "show", "0:3")
    assert shown.code == 0, shown.output
    letter = json.loads(shown.stdout)
    assert letter["dlq"]["stage"] == "map" and letter["dlq"]["original.offset"] == "3"
    assert letter["headers"] == {"trace": "t-1"}
    assert letter["call"]["properties"] == {"diagnosis": "secret-phi", "total": 3}
    undecodable = json.loads(cli(env, "dlq", "show", "0:0").stdout)
    assert "wrong magic" in undecodable["call"]["undecodable"]

    hipaa = cli({**env, "HIPAA_MODE": "true"}, "dlq", "show", "0:3")
    assert hipaa.code == 0, hipaa.output
    assert "secret-phi" not in hipaa.stdout and "metric name too long" not in hipaa.stdout
    assert json.loads(hipaa.stdout)["headers"] == {}

    nothing = cli(env, "dlq", "show", "0:99")
    assert nothing.code == 2 and f"{dlq} has no dead letter at 0:99" in nothing.stderr


def test_a_key_klaviyo_refuses_at_run_time_is_one_line_and_exit_1(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    call = {"type": "track", "messageId": "m-k", "timestamp": "2026-01-02T03:04:05Z",
            "userId": "u-k", "event": "Order Completed", "properties": {}}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, Encoder().encode(call))
    assert producer.flush(30) == 0
    env = env_for(kafka_bootstrap, topic, sandbox.url, klaviyo_api_key=WRONG_KEY,
                  state_url=f"sqlite:///{tmp_path}/s.db", batch_linger_ms=10)
    ran = cli(env, "run", timeout=120)
    assert ran.code == 1, ran.output
    assert "Traceback" not in ran.output and WRONG_KEY not in ran.output
    last = ran.stderr_lines[-1]
    assert last.startswith("klaviyo-stream: Klaviyo refused the API key (Klaviyo 401")
    assert "fix KLAVIYO_API_KEY" in last
    for line in ran.stderr_lines[:-1]:
        json.loads(line)  # everything before it is a log line


@pytest.mark.slow
def test_stderr_is_json_only_while_librdkafka_reports_broker_errors(sandbox: Any) -> None:
    dead = "127.0.0.1:9"  # discard port: nothing listens, every connection is refused
    env = env_for(dead, "analytics", sandbox.url, state_url="sqlite:///:memory:",
                  log_level="INFO")
    doctor = cli(env, "doctor")
    assert doctor.code == 1 and "✗ kafka: 127.0.0.1:9 not reachable" in doctor.stdout
    doctor.json_stderr()

    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(json.loads(line))  # fails on the first line that is not JSON
            if lines[-1]["logger"] == "stream.kafka" and lines[-1]["level"] == "ERROR":
                break
        process.send_signal(signal.SIGTERM)
        out, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines += [json.loads(line) for line in rest.splitlines() if line.strip()]
    kafka = [line for line in lines if line["logger"] == "stream.kafka"]
    assert kafka, lines
    assert any("Connect to ipv4#127.0.0.1:9 failed" in line["msg"] for line in kafka)
    assert {line["facility"] for line in kafka} >= {"FAIL"}
    assert {line["client"].split("-")[0] for line in kafka} >= {"rdkafka#consumer"}
    assert lines[0]["msg"] == "starting" and lines[0]["group"] == "group-analytics"
    # the last line is a log record too (a container merges stdout into the same log stream)
    assert out == "" and process.returncode == 0
    assert lines[-1]["msg"] == "stopped" and lines[-1]["consumed"] == 0, lines[-1]
    assert lines[-1]["dead_lettered"] == 0


def _read_terminal(terminal: int, until: str, deadline: float) -> str:
    """What a pseudo-terminal showed, until `until` appears, the other end closes, or time is up."""
    seen = ""
    while until not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk.decode(errors="replace")
    return seen


def test_on_a_terminal_run_logs_text_without_the_settings_dump(sandbox: Any) -> None:
    """LOG_FORMAT unset and stderr a terminal (`scripts/demo`): readable lines, the long
    settings line only at DEBUG, the exit counts as a line like the others."""
    dead = "127.0.0.1:9"  # nothing listens: the service starts and waits for the broker
    for level in ("INFO", "DEBUG"):
        env = env_for(dead, "analytics", sandbox.url, state_url="sqlite:///:memory:",
                      log_level=level)
        terminal, terminal_end = os.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "stream", "run"], env=env, stdout=subprocess.PIPE,
            stderr=terminal_end, stdin=subprocess.DEVNULL, text=True,
        )
        os.close(terminal_end)
        try:
            shown = _read_terminal(terminal, " metrics ", time.monotonic() + 60)
            process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=60)
            shown += _read_terminal(terminal, "stopped", time.monotonic() + 30)
        finally:
            os.close(terminal)
            if process.poll() is None:
                process.kill()
                process.wait()
        lines = [line for line in shown.splitlines() if line.strip()]
        assert out == "" and process.returncode == 0, shown
        assert not any(line.startswith("{") for line in lines), shown
        [starting] = [line for line in lines if " stream: starting " in line]
        assert "group=group-analytics" in starting and "settings=" not in starting
        dumps = [line for line in lines if " stream: settings settings={" in line]
        assert len(dumps) == (level == "DEBUG"), shown
        assert all('"klaviyo_api_key": "**********"' in d for d in dumps)
        assert SANDBOX_API_KEY not in shown
        assert any(" stream: stopped consumed=0 dead_lettered=0" in line for line in lines)


def test_a_redis_password_never_shows(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any, redis_password_url: str
) -> None:
    topic = topic_factory(partitions=1)
    dlq = topic_factory(partitions=1, prefix=f"{topic}-dlq")
    calls = [{"type": "identify", "messageId": f"m-{i}", "timestamp": "2026-01-02T03:04:05Z",
              "userId": f"u-{i}", "traits": {"email": f"p{i}@example.com"}} for i in range(5)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    encoder = Encoder()
    for call in calls:
        producer.produce(topic, encoder.encode(call))
    assert producer.flush(30) == 0
    env = env_for(kafka_bootstrap, topic, sandbox.url, dlq_topic=dlq,
                  state_url=redis_password_url, log_level="DEBUG",
                  klaviyo_revision=RETIRING.isoformat())
    doctor = cli(env, "doctor")
    assert doctor.code == 0, doctor.output
    assert any(line.startswith("✓ state store: Redis ") and ":***@" in line
               for line in doctor.stdout.splitlines())
    wrong = cli({**env, "STATE_URL": redis_password_url.replace(REDIS_PASSWORD, "nope")},
                "doctor")
    assert wrong.code == 1 and "password refused" in wrong.stdout

    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "run"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stderr is not None
        port = None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            seen.append(line)
            if '"msg": "metrics"' in line:
                port = json.loads(line)["port"]
        assert port is not None, "".join(seen)
        import urllib.request

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return resp.read().decode()

        poll_until(lambda: "klaviyo_stream_records_consumed_total{" in metrics(), 60,
                   "a record consumed", 0.2)  # fmt: skip
        scraped = metrics()
        status = cli(env, "status", "--json")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-2000:]
    log = "".join(seen) + err
    starting = json.loads(next(line for line in log.splitlines() if '"msg": "starting"' in line))
    assert starting["state_backend"] == "redis"
    assert starting["settings"]["state_url"].startswith("redis://:***@127.0.0.1:")
    assert starting["settings"]["klaviyo_api_key"] == "**********"
    warned = [json.loads(line) for line in log.splitlines() if '"level": "WARNING"' in line]
    assert any(w["msg"].startswith(f"KLAVIYO_REVISION {RETIRING} retires on") for w in warned)
    for text in (doctor.output, wrong.output, status.output, log, out, scraped):
        assert REDIS_PASSWORD not in text
        assert SANDBOX_API_KEY not in text
    assert "process_cpu_seconds_total" in scraped and "python_info{" in scraped
    assert "klaviyo_stream_build_info{" in scraped and "_created" not in scraped
    assert 'klaviyo_stream_klaviyo_revision_retirement_timestamp_seconds{revision="' in scraped
