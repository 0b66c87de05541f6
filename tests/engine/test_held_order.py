"""A person's work leaves in the order it was processed, even when a deletion holds part of it.

Alice's track names the shared browser, then her delete call (its clock behind) erases it
with her. Bob's identify on that browser, read later from his partition, is newer than the
deletion: it waits for it. His next identify names nothing deleted; sent at once, it lands
first and the held older upsert overwrites his newer traits when it leaves. It waits too.
Found by the lifecycle model."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.lifecycle_model import call, drain, one_replica

BOB = {"userId": "u-bob"}
TRAITS = {"email": "bob@example.com", "phone": "+14155550102"}
SETTLE = {"deletion_settle_seconds": 1.0}


async def test_a_later_upsert_waits_behind_one_held_for_a_deletion(tmp_path: Path) -> None:
    async with one_replica(tmp_path, partitions=2, **SETTLE) as (replica, server, letters):
        now, topic = time.time() - 600, replica.topic
        topic.publish(1, call("identify", "m-0", now + 2, **BOB, anonymousId="d-shared",
                              traits={**TRAITS, "plan": 0}))  # fmt: skip
        topic.publish(0, call("track", "m-1", now + 4, userId="u-alice",
                              anonymousId="d-shared", event="Viewed Page"))  # fmt: skip
        topic.publish(0, call("delete", "m-2", now - 1, userId="u-alice"))  # a clock behind
        topic.publish(1, call("identify", "m-3", now + 8, **BOB, traits={**TRAITS, "plan": 1}))
        await replica.fetch(0, 2)  # the browser goes with alice's erasure
        await replica.fetch(1, 2)  # bob's first identify waits for it; his second too
        await drain(replica, server)
        [bob] = server.store.profiles.values()
        assert bob.attributes["external_id"] == "u-bob"
        assert bob.properties.get("plan") == 1, "an older upsert landed after the newer one"
        assert not letters
