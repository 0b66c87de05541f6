"""A list change waits for its record's own items (the profile its membership needs); an item
that ends without being sent counts too: one caught by the late check as older than a deletion
read since, or one cancelled with a revoked partition. Otherwise the change, and every action
behind it on its person's keys (the deletion, the copy's own change), waits forever."""

from __future__ import annotations

import time
from pathlib import Path

from stream.local.sandbox import SandboxConfig, SeedList
from tests.support.lifecycle_model import Wire, call, drain, one_replica, settle

ANN = {"userId": "u-1", "traits": {"email": "ann@example.com"}}
JOIN = {"integrations": {"Klaviyo": {"lists": {"add": ["L1"]}}}}
CONFIG = SandboxConfig(rate_limits=False, deletion_delay_seconds=0, job_delay_seconds=3600,
                       lists=(SeedList("L1", "Newsletter"),))  # fmt: skip
SETTLE = {"deletion_settle_seconds": 1.0}


async def test_a_list_change_older_than_a_deletion_never_holds_the_deletion_up(
    tmp_path: Path,
) -> None:
    async with one_replica(tmp_path, config=CONFIG, **SETTLE) as (replica, server, letters):
        now = time.time() - 60
        replica.topic.publish(0, call("identify", "m-1", now, **ANN, **JOIN))
        replica.topic.publish(0, call("delete", "m-2", now + 1, userId="u-1"))
        await replica.fetch(0, 2)  # both read before the upsert leaves: it is caught, older
        await drain(replica, server)
        assert not replica.store.open_erasures() and not server.store.profiles
        assert replica.stored == {0: 2}
        assert not letters


async def test_a_list_change_of_a_revoked_partition_never_holds_its_copy_up(
    tmp_path: Path,
) -> None:
    async with one_replica(tmp_path, config=CONFIG, **SETTLE) as (replica, server, letters):
        replica.topic.publish(0, call("identify", "m-1", time.time() - 60, **ANN, **JOIN))
        await replica.fetch(0, 1)
        replica.revoke(0)
        assert replica.send("profiles")  # taken: cancelled (its partition moved on)
        await settle([replica], Wire(), server)
        await replica.fetch(0, 1)  # the partition is back: read again
        await drain(replica, server)
        [profile] = server.store.profiles.values()
        assert list(server.store.lists["L1"].members) == [profile.id]
        assert replica.stored == {0: 1}
        assert not letters
