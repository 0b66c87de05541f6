"""Several Klaviyo accounts from one consumer group, through the real broker (issue 22):
`klaviyo-stream run` with ACCOUNTS_FILE serves two accounts whose records share one topic's
partitions (routed by a field of the call). Each account gets its own profiles (the same
email is one profile in each); when one account's key is revoked (the sandbox answers 401)
only that account's items are parked: the service keeps running and the other account keeps
delivering, and once the key is back every event of both lands exactly once, nothing
dead-lettered, every offset committed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from stream.local.sandbox import SandboxAccount, SandboxConfig, SandboxThread
from stream.ops.produce import Encoder, publish
from tests.support import free_port, wait_until
from tests.support.harness import (
    ServiceProcess,
    committed_lag,
    metric,
    service_env,
    state_dir,
    topic_size,
)

KEYS = {"KEY_A": "pk_brand_a_" + "1" * 24, "KEY_B": "pk_brand_b_" + "2" * 24}
PERSONS = 10
ENCODER = Encoder()


def calls(account: str, start: int, count: int) -> list[dict[str, Any]]:
    """`count` track calls of `account`'s persons (one of them identified by an email the
    other account's persons share), routed by `context.groupId`."""
    found = []
    for n in range(start, start + count):
        person = n % PERSONS
        found.append({
            "type": "track", "messageId": f"{account}-{n}", "event": "Viewed Product",
            "userId": f"u{person}", "properties": {"n": n},
            "timestamp": f"2026-03-01T10:{n // 60 % 60:02d}:{n % 60:02d}Z",
            "context": {"groupId": account, "traits": {"email": f"p{person}@example.com"}},
        })  # fmt: skip
    return found


def events_of(sandbox: SandboxThread, account: str) -> Counter[str]:
    return Counter(e.unique_id or "" for e in list(sandbox.account(account).store.events))


def emails_of(sandbox: SandboxThread, account: str) -> list[str]:
    profiles = list(sandbox.account(account).store.profiles.values())
    return sorted(p.attributes.get("email", "") for p in profiles)


async def revoke(sandbox_url: str, account: str, revoked: bool) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox_url}/sandbox/accounts/{account}", json={"revoked": revoked}) as resp,
    ):
        resp.raise_for_status()


async def test_one_service_two_accounts_a_revoked_key_parks_only_its_account(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=2)
    accounts_file = tmp_path / "accounts.json"
    accounts_file.write_text(json.dumps({"accounts": [
        {"name": "brand-a", "key": "env:KEY_A", "topics": [topic], "field": "context.groupId",
         "equals": ["brand-a"]},
        {"name": "brand-b", "key": "env:KEY_B", "topics": [topic], "field": "context.groupId",
         "equals": ["brand-b"]},
    ]}))  # fmt: skip
    conf = {"bootstrap.servers": kafka_bootstrap}
    first = {name: calls(name, 0, 40) for name in ("brand-a", "brand-b")}
    publish(conf, topic, [c for pair in zip(*first.values(), strict=True) for c in pair], ENCODER)
    port = free_port()
    config = SandboxConfig(  # its default account (the default key) takes nothing here
        accounts=(
            SandboxAccount("brand-a", (KEYS["KEY_A"],)),
            SandboxAccount("brand-b", (KEYS["KEY_B"],)),
        ),
        rate_limits=False,
    )
    with SandboxThread(config) as sandbox:
        env = service_env(
            kafka_bootstrap, topic, sandbox.url, state_dir(),
            accounts_file=accounts_file, metrics_port=port, park_max_seconds=600,
        )  # fmt: skip
        env.update(KEYS)
        service = ServiceProcess(env, tmp_path / "service.log")
        service.start()
        try:

            def delivered(account: str, expected: list[dict[str, Any]]) -> bool:
                assert service.alive, service.log()[-3000:]
                return {c["messageId"] for c in expected} <= set(events_of(sandbox, account))

            for name in ("brand-a", "brand-b"):
                await wait_until(lambda n=name: delivered(n, first[n]), timeout=90, what=name)
            await wait_until(
                lambda: committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0,
                timeout=60, what="the first part committed", poll=0.5,
            )  # fmt: skip
            # each account its own profiles: the same ten emails, one profile each, in both
            emails = sorted(f"p{n}@example.com" for n in range(PERSONS))
            assert emails_of(sandbox, "brand-a") == emails_of(sandbox, "brand-b") == emails

            await revoke(sandbox.url, "brand-b", True)  # Klaviyo answers brand-b's key 401
            second = {name: calls(name, 40, 60) for name in ("brand-a", "brand-b")}
            pairs = zip(*second.values(), strict=True)
            publish(conf, topic, [c for pair in pairs for c in pair], ENCODER)
            await wait_until(
                lambda: delivered("brand-a", second["brand-a"]), timeout=90,
                what="brand-a's events while brand-b's key is refused",
            )  # fmt: skip

            async def parked() -> bool:
                assert service.alive, service.log()[-3000:]
                return await metric(port, "klaviyo_stream_parked_items", account="brand-b") > 0

            await wait_until(parked, timeout=30, what="brand-b's items parked")
            assert service.alive, "a refused key of one account stopped the service"
            later_b = {c["messageId"] for c in second["brand-b"]}
            assert not set(events_of(sandbox, "brand-b")) & later_b  # none got through
            # brand-b's copies are unfinished: the shared partitions' committed offsets wait
            assert committed_lag(kafka_bootstrap, f"group-{topic}", topic) > 0

            await revoke(sandbox.url, "brand-b", False)
            await wait_until(
                lambda: delivered("brand-b", second["brand-b"]), timeout=120,
                what="brand-b's parked events once its key is back",
            )  # fmt: skip
            await wait_until(
                lambda: committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0,
                timeout=60, what="every offset committed", poll=0.5,
            )  # fmt: skip
            assert service.terminate() == 0, service.log()[-3000:]
        finally:
            service.stop_quietly()
        for name in ("brand-a", "brand-b"):
            expected = Counter(c["messageId"] for c in first[name] + second[name])
            assert events_of(sandbox, name) == expected, name  # each event once, its own account
        assert not list(sandbox.store.events)  # nothing went with the global key
    log = service.log()
    assert "account parked" in log and "brand-b" in log
    assert not [key for key in KEYS.values() if key in log]  # keys never logged
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
