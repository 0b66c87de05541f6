"""The service serving several Klaviyo accounts from one consumer group (issue 22): records
routed by topic, header and field to their accounts, each account kept apart (its own profiles
at Klaviyo, its own identity graph and dedup window), a record going to several accounts
finished only when every account's copy is, and dead letters naming their account.

Run in-process (`tests.support.inprocess`): the real fetch loop, ledger and send stages over
in-memory topics, with the sandbox serving every account by its key.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.accounts.routing import REPLAY_HEADER
from stream.local.sandbox import SandboxAccount, SandboxConfig, SandboxServer
from stream.local.sandbox.state import Sandbox
from stream.ops.produce import Encoder, key_of
from stream.telemetry import metrics
from tests.support import service_settings, wait_until
from tests.support.destination import write_yaml
from tests.support.inprocess import all_committed, serving
from tests.support.source import Topics

TOPIC = "calls"
ENCODER = Encoder()
KEYS = {
    "KEY_A": "pk_brand_a_" + "1" * 24,
    "KEY_B": "pk_brand_b_" + "2" * 24,
    "KEY_C": "pk_acme_" + "3" * 27,
}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, key in KEYS.items():
        monkeypatch.setenv(name, key)
    yield


def sandbox_config(**extra: Any) -> SandboxConfig:
    """brand-a is the sandbox's default account; brand-b and acme have theirs."""
    return SandboxConfig(
        api_keys=(KEYS["KEY_A"],),
        accounts=(
            SandboxAccount("brand-b", (KEYS["KEY_B"],)),
            SandboxAccount("acme", (KEYS["KEY_C"],)),
        ),
        **extra,
    )


def settings_for(url: str, tmp: Path, document: dict[str, Any], **extra: Any) -> Any:
    return service_settings(
        "127.0.0.1:1", TOPIC, url,
        state_url=f"sqlite:///{tmp}/state.db",
        accounts_file=write_yaml(tmp, "accounts.yaml", document),
        klaviyo_api_key=None,
        **extra,
    )  # fmt: skip


def publish(topics: Topics, call: dict[str, Any], account: str | None = None) -> None:
    headers = [("klaviyo-account", account.encode())] if account else None
    topics.produce(TOPIC, ENCODER.encode(call), key_of(call), headers=headers)


def identify(user: str, email: str, **context: Any) -> dict[str, Any]:
    return {
        "type": "identify", "messageId": f"i-{uuid.uuid4()}", "userId": user,
        "timestamp": "2026-03-01T10:00:00Z", "traits": {"email": email}, "context": context,
    }  # fmt: skip


def track(user: str, n: int, message_id: str | None = None, **context: Any) -> dict[str, Any]:
    return {
        "type": "track", "messageId": message_id or f"t-{n}-{uuid.uuid4()}",
        "event": "Viewed Product", "userId": user, "properties": {"n": n},
        "timestamp": f"2026-03-01T10:{n // 60:02d}:{n % 60:02d}Z", "context": context,
    }  # fmt: skip


def emails(account: Sandbox) -> list[str]:
    return sorted(p.attributes.get("email", "") for p in account.store.profiles.values())


def unique_ids(account: Sandbox) -> Counter[str]:
    return Counter(e.unique_id or "" for e in account.store.events)


THREE = {
    "deletes": "routed",
    "accounts": [
        {"name": "acme", "key": "env:KEY_C", "topics": [TOPIC], "field": "context.groupId",
         "equals": ["acme"]},
        {"name": "brand-b", "key": "env:KEY_B", "header": True},
        {"name": "brand-a", "key": "env:KEY_A", "topics": [TOPIC]},
    ],
}  # fmt: skip


async def test_three_accounts_on_one_topic_by_field_header_and_topic(tmp_path: Path) -> None:
    """Every call lands in its account on the right profile; the same email in two accounts
    is one profile in each; a delete routed to one account erases nothing in another."""
    topics = Topics({TOPIC: 2})
    acme, header_b = {"groupId": "acme"}, "brand-b"
    publish(topics, identify("u1", "ada@example.com", **acme))
    publish(topics, identify("u1", "ada@example.com"), header_b)
    publish(topics, identify("u2", "bob@example.com"))
    tracks = {
        "acme": [track("u1", n, **acme) for n in range(3)],
        "brand-b": [track("u1", 10 + n) for n in range(3)],
        "brand-a": [track("u2", 20 + n) for n in range(3)],
    }
    for name, calls in tracks.items():
        for call in calls:
            publish(topics, call, header_b if name == "brand-b" else None)
    routed = metrics.REGISTRY.get_sample_value(
        "klaviyo_stream_records_routed_total", {"account": "acme", "via": "field"}
    ) or 0.0
    async with SandboxServer(sandbox_config()) as sandbox:
        settings = settings_for(sandbox.url, tmp_path, THREE)
        accounts = {
            "acme": sandbox.account("acme"),
            "brand-b": sandbox.account("brand-b"),
            "brand-a": sandbox.sandbox,
        }
        async with serving(settings, topics) as run:
            await wait_until(lambda: all_committed(topics, TOPIC), what="every record")
            assert emails(accounts["acme"]) == ["ada@example.com"]
            assert emails(accounts["brand-b"]) == ["ada@example.com"]
            assert emails(accounts["brand-a"]) == ["bob@example.com"]
            for name, calls in tracks.items():
                assert unique_ids(accounts[name]) == Counter(c["messageId"] for c in calls), name
            [ada_acme] = accounts["acme"].store.profiles.values()
            assert {e.profile_id for e in accounts["acme"].store.events} == {ada_acme.id}
            # a delete for brand-b's ada: acme's ada stays, and acme's later calls still land
            delete = {
                "type": "delete", "messageId": f"d-{uuid.uuid4()}", "userId": "u1",
                "timestamp": "2026-03-01T11:00:00Z", "traits": {"email": "ada@example.com"},
            }  # fmt: skip
            publish(topics, delete, header_b)
            later = track("u1", 50, **acme)
            publish(topics, later)
            await wait_until(lambda: all_committed(topics, TOPIC), what="the delete")
            await wait_until(lambda: not accounts["brand-b"].store.profiles, what="the erasure")
        assert emails(accounts["acme"]) == ["ada@example.com"]
        assert later["messageId"] in unique_ids(accounts["acme"])
        assert not accounts["brand-b"].store.events
        assert run.letters.letters == []
    after = metrics.REGISTRY.get_sample_value(
        "klaviyo_stream_records_routed_total", {"account": "acme", "via": "field"}
    )
    assert after == routed + 5  # ada's identify, three tracks, the later track


FAN_OUT = {
    "unmatched": "dead-letter",
    "accounts": [
        {"name": "brand-a", "key": "env:KEY_A", "topics": [TOPIC], "header": "a"},
        {"name": "brand-b", "key": "env:KEY_B", "topics": [TOPIC], "header": "b"},
        {"name": "acme", "key": "env:KEY_C", "topics": [TOPIC], "fan-out": True,
         "hipaa": True, "field": "context.groupId", "equals": ["group"]},
    ],
}  # fmt: skip


async def test_a_fan_out_record_is_each_accounts_once_and_its_dead_letters_name_theirs(
    tmp_path: Path,
) -> None:
    """acme takes a copy of every record of the group: each account has each of its events
    once, its duplicates dropped in its own window only; a copy one account cannot take is a
    dead letter naming that account (redacted: acme, HIPAA, shares the record) while the
    other account's copy is delivered; a record no account takes is a dead letter naming
    none; every offset is committed."""
    topics = Topics({TOPIC: 2})
    group = {"groupId": "group", "traits": {"email": "ada@example.com"}}
    shared = [track("u1", n, **group) for n in range(4)]
    for call in shared:
        publish(topics, call, "a")
    publish(topics, shared[0], "a")  # a copy of a delivered message id: dropped in both windows
    publish(topics, shared[1], "b")  # the same message id for brand-b: new in brand-b's window
    bad = track("u1", 9, **group)
    bad["properties"] = {"big": "x" * 200_000}  # Klaviyo refuses a string over 100 KB
    publish(topics, bad, "a")
    nobody = track("u2", 10)
    publish(topics, nobody, "zzz")
    async with SandboxServer(sandbox_config()) as sandbox:
        settings = settings_for(sandbox.url, tmp_path, FAN_OUT)
        async with serving(settings, topics) as run:
            await wait_until(lambda: all_committed(topics, TOPIC), what="every record")
        brand_a, brand_b = sandbox.sandbox, sandbox.account("brand-b")
        acme = sandbox.account("acme")
        assert unique_ids(brand_a) == Counter(c["messageId"] for c in shared)
        # HIPAA mode drops the property Klaviyo would refuse: acme takes the bad call
        assert unique_ids(acme) == Counter(c["messageId"] for c in [*shared, bad])
        assert unique_ids(brand_b) == Counter([shared[1]["messageId"]])
    unmatched, refused = sorted(run.letters.letters, key=lambda x: x.record.account or "")
    assert unmatched.record.account is None and unmatched.stage == "route"
    assert "dlq.account" not in dict(unmatched.headers())
    assert refused.record.account == "brand-a" and refused.record.offset == 6
    assert dict(refused.headers())["dlq.account"] == b"brand-a"
    assert refused.record.redact_as == "acme"  # its fan-out spans a HIPAA account


async def test_a_replayed_dead_letter_goes_to_its_account_only(tmp_path: Path) -> None:
    """A record replayed for brand-b (`dlq replay --account`) reaches brand-b alone, though
    the rules would also send it to acme (fan-out)."""
    topics = Topics({TOPIC: 1})
    group = {"groupId": "group", "traits": {"email": "ada@example.com"}}
    call = track("u1", 1, **group)
    topics.produce(TOPIC, ENCODER.encode(call), key_of(call),
                   headers=[("klaviyo-account", b"a"), (REPLAY_HEADER, b"brand-b")])  # fmt: skip
    async with SandboxServer(sandbox_config()) as sandbox:
        settings = settings_for(sandbox.url, tmp_path, FAN_OUT)
        async with serving(settings, topics):
            await wait_until(lambda: all_committed(topics, TOPIC), what="the replay")
        assert unique_ids(sandbox.account("brand-b")) == Counter([call["messageId"]])
        assert not sandbox.sandbox.store.events and not sandbox.account("acme").store.events


async def test_a_fixed_rate_share_stays_while_auto_shares_follow_the_group(tmp_path: Path) -> None:
    """KLAVIYO_RATE_SHARE=auto is the default of the accounts that set none: they follow the
    group's size; an account with `rate-share: 0.25` keeps its quarter whatever the group."""
    document = {
        "accounts": [
            {"name": "brand-a", "key": "env:KEY_A", "topics": [TOPIC], "rate-share": 0.25},
            {"name": "brand-b", "key": "env:KEY_B", "header": True},
        ]
    }
    async with SandboxServer(sandbox_config()) as sandbox:
        settings = settings_for(sandbox.url, tmp_path, document, klaviyo_rate_share="auto")
        async with serving(settings, Topics({TOPIC: 1})) as run:
            await wait_until(lambda: run.service.running is not None, what="assembled")
            running = run.service.running
            assert running is not None
            await running.housekeeping._follow_group_size()  # what the sweep does each 30 s
            shares = {name: a.governor.share for name, a in running.parts.accounts.items()}
    assert shares == {"brand-a": 0.25, "brand-b": 1.0}  # the in-memory group has one member
