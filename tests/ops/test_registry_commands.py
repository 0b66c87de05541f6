"""`produce`, `doctor` and `run` in registry mode, against the real registry (Apicurio) and
broker: produce registers (or, when it may not, looks up) our schemas before it publishes;
doctor checks access, our subjects and their compatibility; credentials the registry refuses
are one line naming the setting, never the secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from stream.core.calls import CALL_TYPES
from stream.core.settings import SANDBOX_API_KEY
from stream.local.sandbox import SandboxConfig, SandboxThread
from stream.ops.produce import subject_name
from tests.support.cli import clean_env, cli
from tests.support.registry import Registry


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with SandboxThread(SandboxConfig(rate_limits=False)) as server:
        yield server


def env_for(bootstrap: str, topic: str, sandbox_url: str, state: Path, **extra: Any) -> dict:
    return clean_env(
        kafka_bootstrap_servers=bootstrap, kafka_topics=topic, kafka_group_id=f"group-{topic}",
        dlq_topic=f"{topic}-dlq", klaviyo_base_url=sandbox_url, klaviyo_api_key=SANDBOX_API_KEY,
        metrics_port=0, state_url=f"sqlite:///{state}/s.db", **extra,
    )  # fmt: skip


def first_bytes(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peek-{topic}",
                        "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        while len(values) < count:
            values += [m.value()[:5] for m in consumer.consume(count, 5) if m.error() is None]
    finally:
        consumer.close()
    return values


def test_produce_registers_every_schema_first_then_publishes_in_confluent_format(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any, tmp_path: Path, registry: Registry
) -> None:
    topic = topic_factory(partitions=1)
    env = env_for(kafka_bootstrap, topic, sandbox.url, tmp_path, **registry.settings("writer"))
    ran = cli(env, "produce", "--sample", "20")
    assert ran.code == 0, ran.output
    with registry.client("reader") as client:
        subjects = set(client.get_subjects())
        ids = {client.get_latest_version(subject_name(topic, t)).schema_id for t in CALL_TYPES}
    assert {subject_name(topic, t) for t in CALL_TYPES} <= subjects
    for head in first_bytes(kafka_bootstrap, topic, 20):
        assert head[0] == 0 and int.from_bytes(head[1:5], "big") in ids

    # a principal that may read but not register looks the schemas up, and publishes
    reader = env_for(kafka_bootstrap, topic, sandbox.url, tmp_path, **registry.settings("reader"))
    again = cli(reader, "produce", "--sample", "5")
    assert again.code == 0, again.output
    # ...but not onto a topic whose schemas nobody registered: nothing is published
    fresh = topic_factory(partitions=1)
    refused = cli({**reader, "KAFKA_TOPICS": fresh}, "produce", "--sample", "5")
    assert refused.code == 1
    assert f"is not registered under {subject_name(fresh, 'identify')}" in refused.stderr


@pytest.mark.parametrize("command", ["produce", "run"])
def test_credentials_the_registry_refuses_are_one_line_exit_2_without_the_secret(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any, tmp_path: Path, registry: Registry,
    command: str,
) -> None:
    topic = topic_factory(partitions=1)
    wrong = "reader:" + registry.passwords["reader"] + "-typo"
    env = env_for(kafka_bootstrap, topic, sandbox.url, tmp_path, schema_registry_url=registry.url,
                  schema_registry_basic_auth_user_info=wrong)  # fmt: skip
    args = ["produce", "--sample", "3"] if command == "produce" else ["run"]
    ran = cli(env, *args, timeout=120)
    assert ran.code == 2, ran.output
    assert ran.stderr_lines[-1] == (
        "klaviyo-stream: configuration error: SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO: "
        "the Schema Registry refused our credentials (401)"
    )
    assert "Traceback" not in ran.output and registry.passwords["reader"] not in ran.output


def test_doctor_checks_access_subjects_and_their_compatibility(
    kafka_bootstrap: str, topic_factory: Any, sandbox: Any, tmp_path: Path, registry: Registry
) -> None:
    topic = topic_factory(partitions=1)
    env = env_for(kafka_bootstrap, topic, sandbox.url, tmp_path, **registry.settings("reader"))
    env["DLQ_TOPIC"] = topic_factory(partitions=1, prefix=f"{topic}-dlq")
    before = cli(env, "doctor")
    assert before.code == 0, before.output
    assert f"✓ schema registry: {registry.url} answers, credentials accepted" in before.stdout
    assert f"✓ subjects of {topic}: none yet" in before.stdout
    assert "new subjects get BACKWARD compatibility" in before.stdout

    assert cli({**env, **_upper(registry.settings("writer"))}, "produce", "--sample", "3").code == 0
    after = cli(env, "doctor")
    assert after.code == 0, after.output
    assert f"✓ subjects of {topic}: 7 present: Alias BACKWARD, Delete BACKWARD" in after.stdout

    track = subject_name(topic, "track")  # (a subject's NONE, in Apicurio, means the global's)
    registry.server.request("PUT", f"/config/{track}", {"compatibility": "FORWARD"})
    weak = cli(env, "doctor")
    assert weak.code == 1
    assert f"✗ subjects of {topic}: 7 present" in weak.stdout and "Track FORWARD" in weak.stdout
    assert f"{track} would take a schema older records cannot be read with" in weak.stdout

    wrong = cli({**env, "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "reader:nope"}, "doctor")
    assert wrong.code == 1
    [line] = [ln for ln in wrong.stdout.splitlines() if "schema registry" in ln]
    assert line.startswith(f"✗ schema registry: {registry.url}: SCHEMA_REGISTRY_BASIC_AUTH_USER")
    assert "refused our credentials (401)" in line and "nope" not in wrong.output


def _upper(settings: dict[str, str]) -> dict[str, str]:
    return {k.upper(): v for k, v in settings.items()}
