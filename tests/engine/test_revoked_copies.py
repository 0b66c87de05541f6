"""A partition that comes back to the replica it left (cooperative-sticky assignment gives a
member that lost its partitions the same ones when it rejoins): the records it reads again are
the ones that go. Their first reading belongs to the ended generation, whose items are
cancelled when taken; a copy that waited for it as a duplicate would be lost with it."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.lifecycle_model import Wire, call, drain, one_replica, settle

SETTLE = {"deletion_settle_seconds": 1.0}

async def test_an_event_read_again_after_its_partition_came_back_is_sent(
    tmp_path: Path,
) -> None:
    async with one_replica(tmp_path, **SETTLE) as (replica, server, letters):
        now = time.time() - 60
        replica.topic.publish(0, call("track", "m-1", now, userId="u-1", event="Viewed Product"))
        await replica.fetch(0, 1)  # its event waits in the events lane
        replica.revoke(0)  # past the drain bound: what it left is cancelled when taken
        await replica.fetch(0, 1)  # the partition is back here: read again
        await drain(replica, server)
        assert [e.unique_id for e in server.store.events] == ["m-1"]
        assert replica.topic.committed == {0: 1} or replica.stored == {0: 1}
        assert not letters


async def test_a_delete_read_again_after_its_partition_came_back_is_confirmed(
    tmp_path: Path,
) -> None:
    async with one_replica(tmp_path, **SETTLE) as (replica, server, letters):
        now = time.time() - 60
        replica.topic.publish(0, call("identify", "m-1", now, userId="u-1",
                                      traits={"email": "ann@example.com"}))  # fmt: skip
        await replica.fetch(0, 1)
        await drain(replica, server)
        replica.topic.publish(0, call("delete", "m-2", now + 1, userId="u-1"))
        await replica.fetch(0, 1)  # its deletion waits for the fence
        replica.revoke(0)
        await replica.fetch(0, 1)
        await drain(replica, server)
        assert not server.store.profiles, "the person was not deleted at Klaviyo"
        assert not replica.store.open_erasures(), "the erasure never settled"
        assert replica.stored == {0: 2}
        assert not letters


async def test_a_delete_whose_confirmation_was_cancelled_is_confirmed_when_read_again(
    tmp_path: Path,
) -> None:
    """Its deletion was answered, then the partition moved on before the confirmation left:
    the record must not be remembered as delivered, or its next reading (here, or by another
    replica through the shared dedup store) is dropped and the erasure stays pending."""
    async with one_replica(tmp_path, **SETTLE) as (replica, server, letters):
        now = time.time() - 60
        replica.topic.publish(0, call("identify", "m-1", now, userId="u-1",
                                      traits={"email": "ann@example.com"}))  # fmt: skip
        await replica.fetch(0, 1)
        await drain(replica, server)
        replica.commit()
        replica.topic.publish(0, call("delete", "m-2", now + 1, userId="u-1"))
        await replica.fetch(0, 1)
        replica.beat()  # the fence passes: the deletion leaves and is answered
        assert replica.send("deletion")
        await settle([replica], Wire(), server)
        replica.revoke(0)
        replica.clock.advance(60)
        replica.beat()  # the confirmation is due: taken, and cancelled
        assert replica.send("confirm")
        await settle([replica], Wire(), server)
        replica.commit()  # delivered message ids are written to the store
        await replica.fetch(0, 1)
        await drain(replica, server)
        assert not replica.store.open_erasures(), "the erasure never settled"
        assert replica.stored == {0: 2}
        assert not letters
