"""A person comes back while their deletion is under way: everything sent on their profile
waits until the deletion is done, like the comeback's own items: the anonymous calls its
identification releases, and later calls that reach the person through an identifier the
deletion never knew (their browser's anonymousId). Sent at once, they land on the profile being
deleted, or make it again for the confirmation to delete: the comeback's data is lost."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.lifecycle_model import call, drain, one_replica

ANN = {"userId": "u-1", "traits": {"email": "ann@example.com"}}
SETTLE = {"deletion_settle_seconds": 1.0}


async def test_calls_released_by_a_comeback_wait_for_the_deletion(tmp_path: Path) -> None:
    async with one_replica(tmp_path, partitions=2, **SETTLE) as (replica, server, letters):
        now, topic = time.time() - 600, replica.topic
        topic.publish(0, call("identify", "m-1", now, **ANN))
        await replica.fetch(0, 1)
        await drain(replica, server)
        topic.publish(0, call("delete", "m-2", now + 10, userId="u-1"))
        topic.publish(1, call("track", "m-3", now + 20, anonymousId="browser-9",
                              event="Viewed Page"))  # fmt: skip
        topic.publish(0, call("identify", "m-4", now + 30, anonymousId="browser-9", **ANN))
        await replica.fetch(0, 1)  # the deletion waits for the fence
        await replica.fetch(1, 1)  # held: browser-9 is nobody's yet
        await replica.fetch(0, 1)  # back: releases it, while the deletion is under way
        await drain(replica, server)
        [profile] = server.store.profiles.values()
        assert profile.attributes["email"] == "ann@example.com"
        events = [e.unique_id for e in server.store.events if e.profile_id == profile.id]
        assert events == ["m-3"], "the comeback's browsing was deleted with the old profile"
        assert not letters


async def test_a_browser_call_reaching_a_comeback_waits_for_the_deletion(tmp_path: Path) -> None:
    async with one_replica(tmp_path, partitions=2, **SETTLE) as (replica, server, letters):
        now, topic = time.time() - 600, replica.topic
        topic.publish(0, call("identify", "m-1", now, **ANN))
        await replica.fetch(0, 1)
        await drain(replica, server)
        topic.publish(0, call("delete", "m-2", now + 10, userId="u-1"))
        topic.publish(0, call("track", "m-3", now + 20, userId="u-1", anonymousId="browser-9",
                              event="Signed In"))  # fmt: skip
        topic.publish(1, call("track", "m-4", now + 30, anonymousId="browser-9",
                              event="Viewed Page"))  # fmt: skip
        await replica.fetch(0, 2)  # the deletion waits for the fence; back on browser-9
        await replica.fetch(1, 1)  # browser-9 is the comeback's: sent on their profile
        await drain(replica, server)
        [profile] = server.store.profiles.values()
        events = {e.unique_id for e in server.store.events if e.profile_id == profile.id}
        assert events == {"m-3", "m-4"}, "the comeback's browsing was deleted with the old profile"
        assert not letters
