"""A delete call names the shared browser's anonymousId (the SDKs attach it) while nobody owns
it yet, so the anonymousId goes with the erasure. Another person's older call on that browser,
read later from another partition, is still theirs: it names them by userId, which no deletion
erased. Only the erased anonymousId is left out of it; their profile, traits and opt-outs go.
Anonymous calls on that browser older than the deletion are still dropped."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.lifecycle_model import call, drain, one_replica

BOB = {"userId": "u-bob", "anonymousId": "device-1"}


async def test_case1_an_older_call_of_someone_else_on_the_shared_browser_is_not_dropped(
    tmp_path: Path,
) -> None:
    async with one_replica(tmp_path, partitions=2) as (replica, server, letters):
        now = time.time() - 600
        topic = replica.topic
        topic.publish(0, call("delete", "d-1", now, userId="u-alice", anonymousId="device-1"))
        topic.publish(1, call("identify", "b-1", now - 30, **BOB,
                              traits={"email": "bob@example.com", "phone": "+14155550102"}))
        topic.publish(1, call("track", "b-2", now - 20, **BOB, event="Opted Out",
                              integrations={"Klaviyo": {"unsubscribe": ["sms"]}}))
        topic.publish(1, call("track", "a-1", now - 10, anonymousId="device-1",
                              event="Viewed Page"))  # fmt: skip
        await replica.fetch(0, 1)  # the delete first: device-1 is nobody's yet
        await replica.fetch(1, 3)
        await drain(replica, server)
        [bob] = server.store.profiles.values()
        assert bob.attributes["external_id"] == "u-bob"
        assert bob.attributes["email"] == "bob@example.com"
        assert bob.consents["sms.marketing"].state == "unsubscribed"
        assert [e.unique_id for e in server.store.events] == ["b-2"]  # not the anonymous one
        assert not letters
