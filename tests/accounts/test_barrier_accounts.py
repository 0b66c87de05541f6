"""One bad record never stops the service, with ACCOUNTS_FILE too: records built to hurt go
through the per-record stage of a service serving three accounts (routed by a field of the
call, a fan-out account in HIPAA mode with consent rules of its own, deletes to every
account, unmatched records dead-lettered). No exception may leave it; every record ends
finished (filtered, a duplicate, held, absorbed, dead-lettered with a reason) or with work of
one of its copies waiting in an account's send stage or gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stream.core.calls import Record
from stream.engine.parts import Parts
from stream.engine.pipeline import build_client
from stream.engine.service import Running, Service
from stream.rules.route import Router
from tests.support.barrier import JSON_TEXT, TEXT, TIMESTAMPS, TP, encoded
from tests.support.deadletters import DeadLetterSink
from tests.support.inprocess import begin, offline_settings
from tests.support.source import Topics, memory_source

ROOT = Path(tempfile.mkdtemp(prefix="accounts-barrier-"))
for n in range(3):
    (ROOT / f"key-{n}").write_text(f"pk_barrier_{n}_" + str(n) * 24)
(ROOT / "consent.yaml").write_text(
    "rules:\n"
    "  - when: {type: identify, traits: {newsletter: true}}\n"
    "    subscribe: {email: true, list_id: Xy12Ab}\n"
    "  - when: {type: group}\n"
    "    group_lists: {acme: Acme01}\n"
)
ACCOUNTS = ROOT / "accounts.json"
ACCOUNTS.write_text(json.dumps({"unmatched": "dead-letter", "accounts": [
    {"name": "acme", "key": {"file": str(ROOT / "key-0")}, "field": "context.groupId",
     "equals": ["acme", 7]},
    {"name": "brand-b", "key": {"file": str(ROOT / "key-1")}, "field": "traits.plan",
     "equals": ["gold"]},
    {"name": "group", "key": {"file": str(ROOT / "key-2")}, "fan-out": True, "hipaa": True,
     "consent": str(ROOT / "consent.yaml"), "field": "properties.v", "equals": ["x", 0]},
]}))  # fmt: skip

ROUTED = st.fixed_dictionaries(  # values the rules look at, among odd ones
    {},
    optional={
        "groupId": st.sampled_from(["acme", "acme", 7, "7", None, ["acme"]]),
        "traits": st.fixed_dictionaries(
            {},
            optional={
                "plan": st.sampled_from(["gold", "GOLD", 1, None]),
                "newsletter": st.booleans(),
                "email": st.sampled_from(["ann@example.com", "not-an-email"]) | TEXT,
            },
        ),
    },
).map(json.dumps)
CALLS = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["identify", "track", "page", "screen", "alias", "group", "delete"]
        ),
        "messageId": st.sampled_from(["m1", "m2", "m3"]) | st.uuids().map(str),
        "timestamp": TIMESTAMPS,
    },
    optional={
        "userId": TEXT,
        "anonymousId": TEXT,
        "event": TEXT,
        "traits": st.sampled_from(['{"plan": "gold", "email": "ann@example.com"}']) | JSON_TEXT,
        "properties": st.sampled_from(['{"v": "x"}', '{"v": 0}']) | JSON_TEXT,
        "context": st.one_of(ROUTED, ROUTED, JSON_TEXT),
    },
)


@contextlib.asynccontextmanager
async def three_accounts() -> AsyncIterator[tuple[Running, DeadLetterSink]]:
    """A three-account service's run, assembled and not started (each account's own SQLite
    store in a fresh folder, closed after)."""
    with tempfile.TemporaryDirectory(prefix="state-") as state:
        settings = offline_settings(
            kafka_topics=(TP[0],), accounts_file=str(ACCOUNTS), klaviyo_api_key=None,
            state_url=f"sqlite:///{state}/state.db",
        )  # fmt: skip
        letters = DeadLetterSink()
        service = Service(settings, source=memory_source(Topics({}), ()), dead_letters=letters)
        async with build_client(settings) as client:
            running = service.assemble(client)
            try:
                yield running, letters
            finally:
                for account in running.parts.accounts.values():
                    account.store.close()


async def run_stage(values: list[bytes]) -> tuple[Parts, list[Record], DeadLetterSink]:
    """The per-record stage of a three-account service over `values`; the ledger closed after
    (dead letters written)."""
    async with three_accounts() as (running, letters):
        records = begin(running.parts.ledger, values, TP)
        await running.handler.handle(records)
        await running.parts.ledger.close(timeout=30)
    return running.parts, records, letters


@given(st.lists(CALLS, min_size=1, max_size=8))
def test_no_exception_leaves_the_per_record_stage_of_several_accounts(
    calls: list[dict[str, Any]],
) -> None:
    values = [v for v in (encoded(c) for c in calls) if v is not None]
    values.append(b"\xc3\x01garbage")  # and one record nobody could read
    parts, records, letters = asyncio.run(run_stage(values))
    assert len(records) == len(values)
    waiting: set[int] = set()  # Kafka records with items of theirs (or a copy's) in a lane
    for account in parts.accounts.values():
        for lane in account.sender.lanes.values():
            for batch in lane.drain():
                for record in batch.records:
                    waiting.add(id(record.parent or record))
        for work in account.gate.waiting():  # a deletion waits to settle there
            for record in work.records:
                waiting.add(id(record.parent or record))
    copies = {id(c.parent or c): r for r in records for c in r.waiting or ()}
    originals = [r for r in records if id(r) not in copies]
    for record in originals:
        if record.open:
            assert id(record) in waiting, "a record neither finished nor sent"
        else:
            assert id(record) not in waiting
    assert letters.reasons, "the unreadable record must be dead-lettered"
    assert all(reason.strip() for reason in letters.reasons)
    assert {x.record.account for x in letters.letters} <= {None, "acme", "brand-b", "group"}


class HurtingRouter(Router):
    """An account's event definitions that raise on whatever they read."""

    __slots__ = ()

    def reason_to_skip(self, call: Any) -> str | None:
        raise ValueError("a rule built to hurt")


async def test_an_accounts_rules_that_hurt_cost_only_its_copy() -> None:
    """Whatever one account's own rules raise on a call (its consent rules, its event
    definitions) dead-letters that account's copy, with the reason; the other copy goes on."""
    call = {"type": "track", "messageId": "m-hurt", "timestamp": "2026-03-01T10:00:00Z",
            "userId": "u-1", "event": "Viewed", "properties": '{"v": "x"}',
            "context": json.dumps({"groupId": "acme"})}  # fmt: skip
    value = encoded(call)
    assert value is not None
    async with three_accounts() as (running, letters):
        group = running.parts.accounts["group"]
        router = group.processor.router
        fields = {f.name: getattr(router, f.name) for f in dataclasses.fields(router)}
        group.processor = dataclasses.replace(group.processor, router=HurtingRouter(**fields))
        records = begin(running.parts.ledger, [value], TP)
        await running.handler.handle(records)
        lanes = running.parts.accounts["acme"].sender.lanes.values()
        sent = [r for lane in lanes for b in lane.drain() for r in b.records]
        await running.parts.ledger.close(timeout=30)
    assert [letter.record.account for letter in letters.letters] == ["group"]
    assert "a rule built to hurt" in letters.reasons[0]
    assert [r.account for r in sent] == ["acme"]
