"""Pytest plugin: one real local Kafka broker per test session, and unique topics on it.

Enable with `pytest_plugins = ["tests.support.kafka"]` in tests/conftest.py. The broker is a
`stream.local.kafka.LocalKafka` (real Kafka 4.x, KRaft); its first start resolves the jars with
Maven, later ones use the cache.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from stream.local.kafka import LocalKafka

TopicFactory = Callable[..., str]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[LocalKafka]:
    """The session's LocalKafka, started once and stopped when the session ends."""
    kafka = LocalKafka()
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalKafka) -> str:
    """`127.0.0.1:PORT` of the session's real broker."""
    return kafka_broker.bootstrap_servers


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> TopicFactory:
    """Make `make(partitions=3, prefix=None) -> name`: a new, uniquely named topic, ready to use.

    The name starts with the test's name, so a broker's topic list points at its test.
    """
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    default_prefix = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(partitions: int = 3, prefix: str | None = None, timeout: float = 30) -> str:
        name = f"{prefix or default_prefix}-{uuid.uuid4().hex[:8]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
        )
        futures[name].result(timeout=timeout)
        wait_for_leaders(admin, name, partitions, timeout)
        return name

    return make


def wait_for_leaders(admin: AdminClient, topic: str, partitions: int, timeout: float) -> None:
    """Wait until metadata shows every partition of `topic` with a leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"topic {topic} has no leader for every partition after {timeout} s")
