"""LocalKafka against the real broker: round trip, restart keeps data, stop leaves no JVM."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.local.kafka import LocalKafka
from tests.support.kafka import TEST_JVM_OPTIONS, TopicFactory, new_broker


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Produce `values` (key = value) with acks=all and fail on any delivery error."""
    errors: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for value in values:
        producer.produce(topic, key=value, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "records still undelivered after 30 s"
    assert errors == []


def _consume(consumer: Consumer, count: int, timeout: float = 60) -> list[bytes]:
    """Read until `count` records arrived or `timeout` passed; return their values."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(values) < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=count, timeout=1.0):
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            values.append(value)
    return values


def _java_processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_round_trip(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=3)
    sent = [f"record-{i}".encode() for i in range(20)]
    _produce(kafka_bootstrap, topic, sent)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"round-trip-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        received = _consume(consumer, len(sent))
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)


def test_restart_keeps_data_and_ports(tmp_path: Path) -> None:
    """(With the tests' JVM options, which reach the broker's JVM and its restarted one.)"""
    work_dir = tmp_path / "kafka"
    with new_broker(work_dir=work_dir) as kafka:
        bootstrap = kafka.bootstrap_servers
        assert kafka.pid in _java_processes_mentioning(TEST_JVM_OPTIONS[0])
        topic = "restart-test"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
            topic
        ].result(timeout=30)
        before = [f"before-{i}".encode() for i in range(5)]
        _produce(bootstrap, topic, before)
        old_pid = kafka.pid
        assert old_pid is not None

        assert kafka.restart() == bootstrap
        assert kafka.is_running()
        assert not _pid_alive(old_pid)
        assert kafka.pid in _java_processes_mentioning(TEST_JVM_OPTIONS[0])

        after = [b"after-0"]
        _produce(bootstrap, topic, after)
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "restart-test",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            received = _consume(consumer, len(before) + len(after))
        finally:
            consumer.close()
        assert received == before + after
    assert work_dir.is_dir(), "a work_dir that was given must be kept"
    assert (work_dir / "data" / "meta.properties").is_file()


def test_stop_leaves_no_java_process() -> None:
    kafka = LocalKafka()
    kafka.start()
    pid = kafka.pid
    work_dir = kafka.work_dir
    assert pid is not None and work_dir is not None
    assert pid in _java_processes_mentioning(str(work_dir))

    kafka.stop()

    assert not kafka.is_running()
    assert kafka.pid is None
    assert not _pid_alive(pid)
    assert _java_processes_mentioning(str(work_dir)) == []
    assert not work_dir.exists(), "a temporary work_dir must be removed on stop"
    kafka.stop()  # idempotent


def test_bootstrap_before_start_is_an_error() -> None:
    from stream.core.errors import BrokerError

    with pytest.raises(BrokerError):
        _ = LocalKafka().bootstrap_servers
