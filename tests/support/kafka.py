"""Pytest plugin: one real local Kafka broker per test run, and unique topics on it.

Enable with `pytest_plugins = ["tests.support.kafka"]` in tests/conftest.py. The broker is a
`stream.local.kafka.LocalKafka` (real Kafka 4.x, KRaft, a 1 GiB JVM); its first start resolves
the jars with Maven, later ones use the cache.

Under pytest-xdist the workers share ONE broker, owned by the controller process: the first
worker that needs it drops a request file in a directory the controller gave every worker; a
thread of the controller starts the broker and writes its address (or why it failed) beside it;
the controller stops it when the run ends, after every worker is done. Nothing starts when no
test asks for Kafka. Without xdist the session fixture starts and stops it itself. Tests share
the broker through unique topic and group names; a test that stops or restarts a broker takes
`private_kafka`, a broker of its own.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from stream.local.kafka import LocalKafka
from tests.support import poll_until

TopicFactory = Callable[..., str]

# C1 only: a test broker starts in about half the CPU (5 s instead of 9 on this machine) and
# the suite's traffic is light
TEST_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1",)
_DIR_KEY = "kafka_shared_dir"  # workerinput key: where request and address files live
_REQUEST = "broker.request"
_ADDRESS = "broker.json"


class _SharedBroker:
    """The controller's side: start the broker when a worker asks, stop it at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.kafka: LocalKafka | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kafka-broker", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._done.wait(0.05):  # poll for the request file: workers cannot call us
            if (self.directory / _REQUEST).exists():
                break
        else:
            return
        answer: dict[str, Any]
        try:
            self.kafka = new_broker()
            answer = {"bootstrap": self.kafka.start()}
        except Exception as exc:  # noqa: BLE001 - every worker's fixture reports it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        _write_atomically(self.directory / _ADDRESS, json.dumps(answer))

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        if self.kafka is not None:
            self.kafka.stop()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


_shared_key = pytest.StashKey[_SharedBroker]()


def new_broker(work_dir: Path | None = None) -> LocalKafka:
    """A LocalKafka with the tests' JVM options (not started)."""
    return LocalKafka(work_dir=work_dir, jvm_options=TEST_JVM_OPTIONS)


def _controller(config: pytest.Config) -> bool:
    """This process hands tests to xdist workers (and runs none itself)."""
    if hasattr(config, "workerinput") or config.getoption("collectonly"):
        return False
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def pytest_configure(config: pytest.Config) -> None:
    if _controller(config):
        directory = Path(tempfile.mkdtemp(prefix="pytest-kafka-"))
        config.stash[_shared_key] = _SharedBroker(directory)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist hook (controller): tell each worker where to ask for the broker."""
    shared = node.config.stash.get(_shared_key, None)
    if shared is not None:
        node.workerinput[_DIR_KEY] = str(shared.directory)


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(_shared_key, None)
    if shared is not None:
        shared.close()
        for name in (_REQUEST, _ADDRESS):
            (shared.directory / name).unlink(missing_ok=True)
        shared.directory.rmdir()


def _ask_controller(directory: Path, timeout: float = 180) -> str:
    """A worker's side: ask for the shared broker and wait for its address."""
    (directory / _REQUEST).touch()
    address = directory / _ADDRESS
    poll_until(address.exists, timeout=timeout, what="the shared Kafka broker", poll=0.05)
    answer = json.loads(address.read_text())
    if "error" in answer:
        raise RuntimeError(f"the shared Kafka broker did not start: {answer['error']}")
    return str(answer["bootstrap"])


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """`127.0.0.1:PORT` of the run's real broker (shared by every xdist worker)."""
    workerinput: dict[str, Any] | None = getattr(request.config, "workerinput", None)
    if workerinput is not None and _DIR_KEY in workerinput:
        yield _ask_controller(Path(workerinput[_DIR_KEY]))
        return
    kafka = new_broker()
    kafka.start()
    try:
        yield kafka.bootstrap_servers
    finally:
        kafka.stop()


@pytest.fixture
def private_kafka() -> Iterator[LocalKafka]:
    """A broker of the test's own, for a test that stops or restarts it (the shared one must
    stay up for the tests running beside it)."""
    kafka = new_broker()
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> TopicFactory:
    """Make `make(partitions=3, prefix=None) -> name`: a new, uniquely named topic, ready to use.

    The name starts with the test's name, so a broker's topic list points at its test.
    """
    return make_topic_factory(kafka_bootstrap, request)


def make_topic_factory(bootstrap: str, request: pytest.FixtureRequest) -> TopicFactory:
    """`topic_factory` on any broker (a `private_kafka` one, for instance)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
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

    def led() -> bool:
        meta = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        return (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        )

    poll_until(led, timeout=timeout, what=f"a leader for every partition of {topic}", poll=0.05)

