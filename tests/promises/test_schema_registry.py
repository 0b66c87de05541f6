"""Schema evolution through the real Schema Registry (Apicurio, BACKWARD compatibility).

A producer still on an older version of the track schema (v1: no `context`) and one on the
current version (`context` added, with a default) publish to one topic, both registering
under the topic's track subject through Confluent's API. The service reads both: nothing lost,
and the field the newer version added is mapped where the transformations ask for it. A
producer whose schema the registry finds incompatible is refused (409, the registry's words)
before it publishes anything.
"""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from stream.core.errors import PublishError
from stream.intake.avro import load_schemas, schemas_dir
from stream.intake.decode import make_decoder
from stream.local.sandbox import SandboxServer
from stream.ops.produce import Encoder, publish, subject_name
from tests.support import running_service, sandbox_get, service_settings, wait_until
from tests.support.harness import topic_size
from tests.support.registry import Registry

RULES = """
transformations:
  - when: {type: track}
    rules:
      - copy: {from: context.campaign.name, to: properties.campaign}
"""


def _schemas(directory: Path, track: dict[str, Any]) -> Any:
    """Our schemas with another track schema (an older version, or an incompatible one)."""
    directory.mkdir()
    for path in schemas_dir().glob("*.avsc"):
        shutil.copy(path, directory)
    (directory / "track.avsc").write_text(json.dumps(track))
    return load_schemas(directory)


def _track(n: int, user: str, campaign: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "track", "messageId": f"m-{n}-{uuid.uuid4()}",
        "timestamp": f"2026-03-01T10:{n // 60:02d}:{n % 60:02d}Z", "userId": user,
        "event": "Viewed Product", "properties": {"n": n},
    }  # fmt: skip
    if campaign is not None:
        call["context"] = {"campaign": {"name": campaign}, "traits": {"email": f"{user}@x.io"}}
    return call


async def test_old_and_new_producers_on_one_topic_and_an_incompatible_one_refused(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, registry: Registry
) -> None:
    topic = topic_factory(partitions=2)
    producer = {"bootstrap.servers": kafka_bootstrap}
    v1 = json.loads((schemas_dir() / "history" / "track.v1.avsc").read_text())
    old_calls = [_track(n, f"u{n % 5}") for n in range(40)]
    new_calls = [_track(n, f"u{n % 5}", campaign=f"spring-{n}") for n in range(40, 80)]
    with registry.client("writer") as client:
        old = Encoder(_schemas(tmp_path / "v1", v1), registry=client, topic=topic)
        publish(producer, topic, old_calls, old)
        publish(producer, topic, new_calls, Encoder(registry=client, topic=topic))
        versions = client.get_versions(subject_name(topic, "track"))
        assert len(versions) == 2, versions  # v1, then the current one: compatible

        incompatible = json.loads((schemas_dir() / "track.avsc").read_text())
        incompatible["fields"].append({"name": "channel", "type": "string"})  # no default
        refused = Encoder(_schemas(tmp_path / "bad", incompatible), registry=client, topic=topic)
        with pytest.raises(PublishError) as refusal:
            publish(producer, topic, [_track(99, "u1")], refused)
        assert client.get_versions(subject_name(topic, "track")) == versions
    said = str(refusal.value)
    assert f"refused the track schema under {subject_name(topic, 'track')} (409: " in said
    assert "Incompatible" in said and "nothing was published" in said
    assert topic_size(kafka_bootstrap, topic) == len(old_calls) + len(new_calls)

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    async with SandboxServer() as sandbox:
        settings = service_settings(
            kafka_bootstrap, topic, sandbox.url, transformations_file=str(rules),
            **registry.settings("reader"),
        )  # fmt: skip

        async def all_arrived() -> bool:
            events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
            return len(events) >= len(old_calls) + len(new_calls)

        with closing(make_decoder(settings)) as decoder:  # type: ignore[type-var]
            async with running_service(settings, decoder) as service:
                await wait_until(all_arrived, timeout=120, what="every event, old and new")
        events = (await sandbox_get(sandbox.url, "/sandbox/events"))["events"]
    assert service.result.dead_lettered == 0
    by_id = {e["unique_id"]: e for e in events}
    assert len(events) == len(by_id) == len(old_calls) + len(new_calls)
    for call in old_calls:
        assert by_id[call["messageId"]]["properties"] == call["properties"]  # nothing to copy
    for call in new_calls:
        mapped = {**call["properties"], "campaign": call["context"]["campaign"]["name"]}
        assert by_id[call["messageId"]]["properties"] == mapped

