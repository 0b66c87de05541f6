"""Fan-out to two accounts with SIGKILLs in the middle (issue 22): each account has each event
once.

`klaviyo-stream run` with ACCOUNTS_FILE serves two accounts that both take every record of one
topic (the first by its rule, the second as a fan-out copy), so each record is two items on
the ledger and its offset moves only once both accounts' copies are done. The service is
killed (SIGKILL) at random points while it delivers a few thousand calls and restarted at once
each time. At every other kill the second account's requests are held unanswered (a slow
Klaviyo, then a timeout that parks the account), so the first account runs ahead and the kill
lands while many records have one copy done and the other not (an offset moved by one copy
alone would lose the other's events). At the end each account's sandbox holds every event
exactly once, on the right profile, one profile per person, nothing dead-lettered and every
offset committed. Once with SQLite (a state file per account) and once with Redis (a key
prefix per account, one database).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream.local.sample import sample_calls
from stream.local.sandbox import SandboxAccount, SandboxConfig, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import wait_until
from tests.support.harness import (
    ServiceProcess,
    assert_exactly_once,
    committed_lag,
    expected_of,
    service_env,
    state_dir,
    stats,
    topic_size,
    with_duplicates,
)

KEYS = {"KEY_A": "pk_brand_a_" + "1" * 24, "KEY_B": "pk_brand_b_" + "2" * 24}
ACCOUNTS = ("brand-a", "brand-b")
RECORDS = 4_000
PERSONS = 300
KILLS = 4


async def delivered(sandbox_url: str) -> int:
    """Events stored by both accounts together."""
    return sum([await stats_events(sandbox_url, name) for name in ACCOUNTS])


async def stats_events(sandbox_url: str, account: str) -> int:
    return int((await stats(sandbox_url, account))["events"])


async def hold(sandbox_url: str, account: str, held: bool) -> None:
    """Hold `account`'s API requests unanswered (a slow Klaviyo), or let them go."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox_url}/sandbox/faults?account={account}", json={"hold": held}) as resp,
    ):
        resp.raise_for_status()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_fan_out_to_two_accounts_with_sigkills_each_account_has_each_event_once(
    kafka_bootstrap: str,
    topic_factory: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    rng = random.Random(seed)
    topic = topic_factory(partitions=4)
    accounts_file = tmp_path / "accounts.json"
    accounts_file.write_text(json.dumps({"accounts": [
        {"name": "brand-a", "key": "env:KEY_A", "topics": [topic]},
        {"name": "brand-b", "key": "env:KEY_B", "topics": [topic], "fan-out": True},
    ]}))  # fmt: skip
    calls = with_duplicates(list(sample_calls(RECORDS, seed=seed, persons=PERSONS)))
    publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())
    events, _profiles = expected_of(calls)
    total = len(events) * len(ACCOUNTS)
    points = sorted(rng.sample(range(total // 20, total * 19 // 20), KILLS))
    extra: dict[str, Any] = {}
    if backend == "redis":
        extra["state_url"] = request.getfixturevalue("clean_redis_url")
    config = SandboxConfig(  # its default account (the default key) takes nothing here
        accounts=tuple(
            SandboxAccount(name, (key,)) for name, key in zip(ACCOUNTS, KEYS.values(), strict=True)
        ),
        rate_limits=False,
    )
    started = time.monotonic()
    with SandboxThread(config) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(), accounts_file=accounts_file,
            kafka_group_instance_id="crashy", **extra,
            klaviyo_timeout_seconds=2,  # a held request times out: its account is parked
        )  # fmt: skip
        env.update(KEYS)
        service = ServiceProcess(env, tmp_path / "service.log")

        async def running() -> None:
            """Started and reading (its signal handlers in place): a kill lands mid-work."""
            service.start()

            def assigned() -> bool:
                assert service.alive, service.log()[-3000:]
                return service.log().count('"partitions assigned"') >= service.starts

            await wait_until(assigned, timeout=120, what="partitions assigned")

        try:
            for n, point in enumerate(points):
                await running()
                # every other kill: brand-b's requests are held unanswered, so brand-a runs
                # ahead and the kill lands while many records have one copy done, one not
                held = n % 2 == 0
                if held:
                    await hold(sandbox.url, "brand-b", True)
                    now = await stats_events(sandbox.url, "brand-a")
                    target = min(len(events), now + rng.randrange(100, 1000))
                    count = partial(stats_events, sandbox.url, "brand-a")
                else:  # a copy or more past the restart: the killed run delivers some
                    now = await delivered(sandbox.url)
                    target = min(total, max(point, now + rng.randrange(1, 100)))
                    count = partial(delivered, sandbox.url)

                async def reached(target: int = target, count: Any = count) -> bool:
                    assert service.alive, service.log()[-3000:]
                    if int(await count()) >= target:
                        return True  # or nothing is left to do (a lost copy never comes)
                    return committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0

                await wait_until(reached, timeout=300, what=f"{target} events before a kill")
                # a random moment after: inside a batch; held, past an offset commit (every
                # 1 s) and often past the request timeout, brand-b parked
                await asyncio.sleep(rng.uniform(1.0, 4.0) if held else rng.uniform(0, 0.3))
                service.kill()
                if held:
                    await hold(sandbox.url, "brand-b", False)
            await running()

            def finished() -> bool:  # every record's copies finished (or lost: checked below)
                assert service.alive, service.log()[-3000:]
                return committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0

            await wait_until(finished, timeout=300, what="every record committed", poll=0.5)
            assert service.terminate() == 0, service.log()[-3000:]
        finally:
            service.stop_quietly()
        refused = {}
        for name in ACCOUNTS:  # each account: each event once, one profile per person
            await assert_exactly_once(sandbox.url, calls, replays_allowed=True, account=name)
            refused[name] = (await stats(sandbox.url, name))["refused_duplicates"]
        assert not list(sandbox.store.events)  # nothing went with the global key
        assert not list(sandbox.store.profiles)
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
    assert not [key for key in KEYS.values() if key in service.log()]  # keys never logged
    print(
        f"{len(calls)} records × 2 accounts ({backend}), {KILLS} SIGKILLs at {points} copies, "
        f"{service.starts} starts, replays refused by unique_id {refused}, "
        f"{time.monotonic() - started:.0f} s"
    )
