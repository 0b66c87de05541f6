"""A delete call read again (its partition revoked and assigned anew) while its first deletion
is still being confirmed: the person's comeback waits until the deletion the re-read started is
confirmed too. Found by the lifecycle model (long run: 'alice L1: the latest change is add,
Klaviyo holds None'): the first deletion's confirmation settled the erasure, the comeback's
event and list change went, and the second deletion's confirmation found the profile they
made and deleted it again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from tests.support.lifecycle_model import (
    KINDS,
    Clock,
    Letter,
    Replica,
    Topic,
    Wire,
    call,
    lifecycle_settings,
    run_dry,
    settle,
    state_url_for,
)

SETTLE = 1.0


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_comeback_waits_for_the_deletion_a_reread_delete_call_started(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state_url = state_url_for(backend, tmp_path, request)
    config = SandboxConfig(
        rate_limits=False, merge_delay_seconds=0, deletion_delay_seconds=0,
        job_delay_seconds=3600, lists=(SeedList("L1", "Newsletter"),),
    )  # fmt: skip
    wire = Wire()
    server = SandboxServer(config)
    server.app.middlewares.append(wire.middleware)
    async with server:
        settings = lifecycle_settings(server.url, state_url, deletion_settle_seconds=SETTLE)
        topic, clock = Topic(1), Clock()
        letters: list[Letter] = []
        replica = Replica(settings, topic, clock, letters)

        async def time_passes() -> None:
            server.sandbox.job_queue.flush()
            clock.advance(SETTLE)
            replica.beat()
            for kind in KINDS:
                replica.send(kind)
            await settle([replica], wire, server)

        try:
            await replica.start()
            now = time.time() - 600
            topic.publish(0, call("delete", "m-0", now, userId="u-alice"))
            joins = {"Klaviyo": {"lists": {"add": ["L1"]}}}
            topic.publish(0, call("track", "m-1", now + 2, userId="u-alice",
                                  event="Preferences Saved", integrations=joins))  # fmt: skip
            wire.stalls = 3
            await replica.fetch(0, 2)  # the deletion, and her comeback waiting for it
            await time_passes()  # the deletion leaves (held on the wire)
            wire.release(0)
            await settle([replica], wire, server)
            await time_passes()  # its confirmation leaves (held on the wire)
            replica.revoke(0)  # nothing committed: the delete call is read again
            await replica.fetch(0, 2)
            wire.release_all()
            await asyncio.sleep(0)
            await run_dry(replica, [replica], wire, server, clock)
            alice = [p for p in server.store.profiles.values()
                     if p.attributes.get("external_id") == "u-alice"]  # fmt: skip
            assert alice, "her comeback was deleted by the confirmation of the re-read deletion"
            assert alice[0].id in server.store.lists["L1"].members
            assert not replica.store.open_erasures()
        finally:
            wire.release_all()
            await replica.close()
