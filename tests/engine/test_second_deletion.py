"""A second delete call for a person who came back after the first, stamped earlier than the
first (it comes from a privacy tool whose clock runs behind): on the delete's own partition
Kafka's order decides, so the comeback before it is erased, at Klaviyo too, and stays erased
when the partition is read again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support.lifecycle_model import (
    Clock,
    Letter,
    Replica,
    Topic,
    Wire,
    call,
    lifecycle_settings,
    run_dry,
    state_url_for,
)

ANN = {"userId": "u-1", "traits": {"email": "ann@example.com"}}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_second_deletion_stamped_before_the_first_erases_the_comeback(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state_url = state_url_for(backend, tmp_path, request)
    config = SandboxConfig(rate_limits=False, deletion_delay_seconds=0, job_delay_seconds=3600)
    async with SandboxServer(config) as server:
        settings = lifecycle_settings(server.url, state_url, deletion_settle_seconds=1.0)
        letters: list[Letter] = []
        topic = Topic(1)
        first = Replica(settings, topic, Clock(), letters)
        second = Replica(settings, topic, Clock(), letters)
        try:
            await first.start()
            now = time.time() - 600
            topic.publish(0, call("identify", "m-1", now, **ANN))
            topic.publish(0, call("delete", "m-2", now + 10, userId="u-1"))
            topic.publish(0, call("identify", "m-3", now + 20, **ANN))  # back after it
            topic.publish(0, call("delete", "m-4", now - 30, userId="u-1"))  # a clock behind
            await first.fetch(0, 4)
            await run_dry(first, [first], Wire(), server, first.clock)
            assert not server.store.profiles, "the comeback before the second deletion stayed"
            assert not first.store.open_erasures()
            first.crash()  # nothing committed: a new replica reads the partition again
            await second.start()
            await second.fetch(0, 4)
            await run_dry(second, [first, second], Wire(), server, second.clock)
            assert not server.store.profiles, "a call before the second deletion came back"
            assert not letters
        finally:
            await first.close()
            await second.close()
