"""A record caught by the late check (it raced a deletion) is processed anew; what its first
processing made and had not sent yet is void. Found by the lifecycle model: carol's comeback
links her browser while her first deletion is under way, so her browser's anonymous opt-out
resolves to her and its unsubscribe waits in the gate with her held work; a second delete
call (a clock behind, after the comeback on her partition) erases her again. The opt-out's
event is caught late and its record processed anew, which stamped the record anew, so the
unsubscribe of its first processing passed the late check and re-created her profile at
Klaviyo after her deletion was confirmed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
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

CAROL = ("u-carol", "carol@example.com", "+14155550103")


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_work_of_a_record_processed_anew_never_outlives_the_deletion(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state_url = state_url_for(backend, tmp_path, request)
    config = SandboxConfig(rate_limits=False, deletion_delay_seconds=0, job_delay_seconds=3600)
    async with SandboxServer(config) as server:
        settings = lifecycle_settings(server.url, state_url, deletion_settle_seconds=1.0)
        topic, wire = Topic(3), Wire()
        letters: list[Letter] = []
        replica = Replica(settings, topic, Clock(), letters)
        try:
            await replica.start()
            now = time.time() - 600
            topic.publish(0, call("delete", "m-0", now, userId="u-carol"))
            opt_out = {"Klaviyo": {"unsubscribe": ["email"]}}
            topic.publish(2, call("track", "m-1", now + 2, anonymousId="d-carol",
                                  event="Opted Out", integrations=opt_out))  # fmt: skip
            traits = {"email": CAROL[1], "phone": CAROL[2]}
            topic.publish(0, call("identify", "m-2", now - 3, userId="u-carol",
                                  anonymousId="d-carol", traits=traits,
                                  integrations={"Klaviyo": {"suppress": False}}))  # fmt: skip
            await replica.fetch(0, 2)  # the deletion, then her comeback (Kafka's order)
            await replica.fetch(2, 1)  # her browser's opt-out: hers now, waits with her work
            replica.beat()
            for kind in KINDS:  # one batch each: her first deletion leaves, nothing else
                replica.send(kind)
            await settle([replica], wire, server)
            topic.publish(0, call("delete", "m-3", now - 25, userId="u-carol"))  # clock behind
            await replica.fetch(0, 1)
            await run_dry(replica, [replica], wire, server, replica.clock)
            await asyncio.sleep(0)
            held = [p.attributes for p in server.store.profiles.values()
                    if set(CAROL) & {v for v in p.attributes.values() if isinstance(v, str)}]
            assert not held, f"carol was deleted but Klaviyo holds {held}"
            assert not replica.store.open_erasures()
        finally:
            await replica.close()
