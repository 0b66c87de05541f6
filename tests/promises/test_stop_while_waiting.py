"""SIGINT and SIGTERM while the service waits on a dependency: it exits within
SHUTDOWN_TIMEOUT_SECONDS, cleanly (exit 0), and loses nothing.

The waits: the Schema Registry (nothing listens where it should be), the state store (Redis
stopped mid-run), and the dead-letter topic (it refuses every write: its `max.message.bytes` is
smaller than any record) together with Klaviyo (the sandbox holds every request). In each
test, a run stopped by SIGINT and then one stopped by SIGTERM while waiting commit nothing they
did not finish; a last run with the dependencies back delivers every call exactly once.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import free_port, read_topic, wait_until
from tests.support.harness import (
    ServiceProcess,
    assert_exactly_once,
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

SHUTDOWN = 6.0  # SHUTDOWN_TIMEOUT_SECONDS of these runs
EXIT = 3.0  # for the process itself to end once its shutdown is done (interpreter, librdkafka)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
TINY = "64"  # bytes: a dead-letter topic that takes no record at all, not even headers alone


def _service(env: dict[str, str], log: Path) -> ServiceProcess:
    service = ServiceProcess({**env, "SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN)}, log)
    service.start()
    return service


def _waiting_on(service: ServiceProcess, port: int, dependency: str) -> Any:
    async def waiting() -> bool:
        assert service.alive, service.log()[-3000:]
        errors = await metric(port, "klaviyo_stream_dependency_errors_total", dependency=dependency)
        return errors >= 2  # it failed, waited, and asked again

    return waiting


async def _stop_while(service: ServiceProcess, waiting: Any, sig: int, what: str) -> None:
    """Wait until the service waits on `what`, send `sig`: it must be gone within the shutdown
    timeout (and the moment its process takes to end), with exit code 0."""
    try:
        await wait_until(waiting, timeout=60, what=f"the service waiting on {what}")
        code = service.signal(sig, timeout=SHUTDOWN + EXIT)
        assert code == 0, service.log()[-3000:]
        assert service.stopped(), service.log()[-3000:]  # its last line: a graceful stop
    finally:
        service.stop_quietly()


def _caught_up(service: ServiceProcess, bootstrap: str, topic: str) -> Any:
    async def done() -> bool:
        assert service.alive, service.log()[-3000:]
        return committed_lag(bootstrap, f"group-{topic}", topic) == 0

    return done


async def _last_run(env: dict[str, str], log: Path, bootstrap: str, topic: str) -> None:
    service = _service(env, log)
    try:
        await wait_until(_caught_up(service, bootstrap, topic), timeout=120, what="everything")
        assert service.terminate(timeout=SHUTDOWN + EXIT) == 0, service.log()[-3000:]
    finally:
        service.stop_quietly()


async def test_stopped_while_waiting_for_the_schema_registry(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, registry: Registry
) -> None:
    topic = topic_factory(partitions=2)
    calls = list(sample_calls(60, seed=31, persons=6))
    with registry.client("writer") as client:
        encoder = Encoder(registry=client, topic=topic)
        publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, encoder)
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        state = state_dir()
        for n, sig in enumerate(SIGNALS):
            port = free_port()
            gone = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"  # as a stopped registry
            env = service_env(kafka_bootstrap, topic, sandbox.url, state, metrics_port=port,
                              schema_registry_url=gone)  # fmt: skip
            service = _service(env, tmp_path / f"run{n}.log")
            await _stop_while(service, _waiting_on(service, port, "schema registry"), sig,
                              "the registry")  # fmt: skip
            assert committed_lag(kafka_bootstrap, f"group-{topic}", topic) == len(calls)
        env = service_env(kafka_bootstrap, topic, sandbox.url, state, **registry.settings())
        await _last_run(env, tmp_path / "last.log", kafka_bootstrap, topic)
        await assert_exactly_once(sandbox.url, calls)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0


async def test_stopped_while_waiting_for_the_state_store(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, stoppable_redis: StoppableRedis
) -> None:
    topic = topic_factory(partitions=2)
    calls = list(sample_calls(90, seed=32, persons=6))
    batches = [calls[:30], calls[30:60], calls[60:]]
    producer = {"bootstrap.servers": kafka_bootstrap}
    publish(producer, topic, batches[0], Encoder())
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        for n, sig in enumerate(SIGNALS):
            port = free_port()
            env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir(), metrics_port=port,
                              state_url=stoppable_redis.url)  # fmt: skip
            service = _service(env, tmp_path / f"run{n}.log")
            try:
                await wait_until(_caught_up(service, kafka_bootstrap, topic), timeout=60,
                                 what="what was published before")  # fmt: skip
            except BaseException:
                service.stop_quietly()
                raise
            stoppable_redis.stop()
            publish(producer, topic, batches[n + 1], Encoder())
            await _stop_while(service, _waiting_on(service, port, "state store"), sig, "Redis")
            assert committed_lag(kafka_bootstrap, f"group-{topic}", topic) > 0
            stoppable_redis.start()
        env = service_env(kafka_bootstrap, topic, sandbox.url, state_dir(),
                          state_url=stoppable_redis.url)  # fmt: skip
        await _last_run(env, tmp_path / "last.log", kafka_bootstrap, topic)
        # ids delivered while Redis was down could not be remembered: Klaviyo refuses replays
        await assert_exactly_once(sandbox.url, calls, replays_allowed=True)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0


async def test_stopped_while_waiting_for_the_dead_letter_topic_and_klaviyo_at_once(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    """Both waits at once, and one shutdown deadline for the two (they used to add up)."""
    topic = topic_factory(partitions=1)
    dlq = create_topic(kafka_bootstrap, f"{topic}-dlq", 1, **{"max.message.bytes": TINY})
    calls = list(sample_calls(40, seed=33, persons=4))
    bad = [b"not a record", b"\x07 nor this"]
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls[:20], Encoder())
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for value in bad:
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls[20:], Encoder())
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        await faults(sandbox.url, hold=True)  # Klaviyo answers nothing
        state = state_dir()
        for n, sig in enumerate(SIGNALS):
            port = free_port()
            env = service_env(kafka_bootstrap, topic, sandbox.url, state, metrics_port=port)
            earlier = await waiting_requests(sandbox.url)  # the last run's, its client gone
            service = _service(env, tmp_path / f"run{n}.log")
            dead_letters = _waiting_on(service, port, "dead-letter topic")

            async def both(dead_letters: Any = dead_letters, earlier: int = earlier) -> bool:
                held = await waiting_requests(sandbox.url) > earlier
                return bool(await dead_letters()) and held

            await _stop_while(service, both, sig, "the dead-letter topic and Klaviyo")
            assert topic_size(kafka_bootstrap, dlq) == 0
            assert committed_lag(kafka_bootstrap, f"group-{topic}", topic) == len(calls) + 2
        await faults(sandbox.url, hold=False)  # the held requests' client is gone: dropped
        assert (await stats(sandbox.url))["events"] == 0
        _set_config(kafka_bootstrap, dlq, "max.message.bytes", "1048588")  # the broker's default
        await _last_run(service_env(kafka_bootstrap, topic, sandbox.url, state),
                        tmp_path / "last.log", kafka_bootstrap, topic)  # fmt: skip
        await assert_exactly_once(sandbox.url, calls)
    letters = read_topic(kafka_bootstrap, dlq, len(bad))
    assert sorted(m.value() for m in letters) == sorted(bad)
    assert topic_size(kafka_bootstrap, dlq) == len(bad)


def _set_config(bootstrap: str, topic: str, name: str, value: str) -> None:
    entry = ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
