"""The send slot the send stage reserves for a batch is the slot its first request spends.

The send stage reserves the governor's slot of the endpoint a batch's first request goes to
before the batch leaves; the deliverer then sends it. For every kind, size and mode, through the
real send stage, deliverer and client into the sandbox (whose log keeps each request in order),
the batch's first request goes to the reserved endpoint: otherwise the reserved slot is wasted
and the request takes another. Actions that need a profile id (list changes, a deletion by
external_id) look the profile up first, on the lookups' own budget; what carries the batch's
entries comes next.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from stream.core.calls import Call, Record
from stream.core.settings import SANDBOX_API_KEY
from stream.delivery.actions import ACTION_KINDS, Action
from stream.delivery.batch import Batch, Item, Kind
from stream.delivery.deliver import Deliverer
from stream.delivery.send import Sender
from stream.klaviyo import mapping
from stream.klaviyo.client import PROFILE_IMPORT, PROFILES, KlaviyoClient
from stream.klaviyo.consent import LIST_ADD, LIST_REMOVE
from stream.klaviyo.governor import Governor
from stream.local.sandbox import SandboxConfig, SandboxThread, SeedList
from stream.local.sandbox.config import DEFAULT_PUBLIC_KEY
from tests.support import sandbox_get

LIST = "LstNws"
CLIENT_KINDS: tuple[Kind, ...] = ("events", "profiles", "subscribe", "back_in_stock")
SERVER_KINDS: tuple[Kind, ...] = ("events", "profiles", *ACTION_KINDS)
LOOKUPS = (PROFILES, PROFILE_IMPORT)  # how an action finds (or makes) a profile id first
_numbers = itertools.count()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxThread]:
    config = SandboxConfig(rate_limits=False, lists=(SeedList(LIST, "News"),))
    with SandboxThread(config) as running:
        yield running


def _item(kind: Kind, who: int) -> Item:
    """One item of `kind` for person `who` (a few persons: client-mode events group by them)."""
    n = next(_numbers)
    email = f"p{who}@x.io"
    record = Record("t", 0, n)
    if kind == "events":
        call = Call("track", f"ep-{n}", "2026-01-01T00:00:00+00:00", user_id=f"u{who}", event="E")
        return Item("events", {"email": email}, mapping.event_attributes(call), [record])
    if kind == "profiles":
        return Item("profiles", {"email": email, "first_name": f"F{n}"}, None, [record],
                    person=f"P{who}")  # fmt: skip
    details: dict[str, Any] = {"channels": ("email",)}
    if kind in ("subscribe", "list_add", "list_remove"):
        details["list_id"] = LIST
    elif kind in ("deletion", "confirm"):
        lookup = ("external_id", f"u{who}") if n % 2 else ("email", email)
        details = {"erasure": f"erase-{n}", "lookups": (lookup,)}
    elif kind == "back_in_stock":
        details = {"channels": ("EMAIL",), "variant": f"SKU-{who}"}
    return Action(kind, {"email": email}, None, [record], person=f"P{who}", label=kind,
                  **details)  # fmt: skip


def _budget(request: dict[str, Any]) -> str:
    """The governor's budget of a logged request (list changes are named by path pattern)."""
    path = str(request["path"])
    if path.startswith("/api/lists/"):
        return LIST_ADD if request["method"] == "POST" else LIST_REMOVE
    return path


async def _last_seq(url: str) -> int:
    return int((await sandbox_get(url, f"/sandbox/requests?since={2**62}"))["last_seq"])


async def _send_all(
    url: str, client_mode: bool, kind: Kind, persons: list[int], most: int
) -> list[tuple[Batch, str | None, list[dict[str, Any]]]]:
    """Send the items through the send stage and deliverer, one batch at a time: (batch, the
    endpoint reserved for it, the requests it made)."""
    sent: list[tuple[Batch, str | None, list[dict[str, Any]]]] = []
    public = DEFAULT_PUBLIC_KEY if client_mode else None
    async with KlaviyoClient(url, SecretStr(SANDBOX_API_KEY), "2026-07-15",
                             public_key=public) as client:  # fmt: skip
        governor = Governor({})  # the sandbox here has no limits: every slot is free
        deliverer = Deliverer(client, governor=governor, client_mode=client_mode)

        async def deliver(batch: Batch) -> None:
            since = await _last_seq(url)
            await deliverer.send(batch)
            log = await sandbox_get(url, f"/sandbox/requests?since={since}")
            sent.append((batch, batch.reserved, log["requests"]))

        sender = Sender(governor, deliver, max_events=most, max_profiles=most, linger_seconds=0,
                        max_in_flight=1, client_mode=client_mode)  # fmt: skip
        sender.start()
        for who in persons:
            sender.add(_item(kind, who))
        await sender.close(timeout=60)
    return sent


@pytest.mark.parametrize(
    ("client_mode", "kind"),
    [(False, k) for k in SERVER_KINDS] + [(True, k) for k in CLIENT_KINDS],
)
@settings(max_examples=25)  # per kind and mode
@given(persons=st.lists(st.integers(0, 3), min_size=1, max_size=9), most=st.integers(1, 6))
@example(persons=[0, 1, 1], most=3)  # client mode: the first person's event goes alone
def test_a_batchs_first_request_goes_where_the_send_stage_reserved_its_slot(
    sandbox: SandboxThread, client_mode: bool, kind: Kind, persons: list[int], most: int
) -> None:
    sent = asyncio.run(_send_all(sandbox.url, client_mode, kind, persons, most))
    assert sum(len(batch.records) for batch, _, _ in sent) == len(persons), "every item sent"
    for batch, reserved, requests in sent:
        budgets = [_budget(r) for r in requests]
        if kind in ACTION_KINDS:  # a profile id is looked up (or made) first, on its budget
            while budgets and budgets[0] in LOOKUPS and budgets[0] != reserved:
                budgets.pop(0)
        if not budgets:  # by external_id: no profile holds it, there is nothing to delete
            [deletion] = batch.items
            assert isinstance(deletion, Action) and deletion.lookups[0][0] == "external_id"
            continue
        assert reserved == budgets[0], (
            f"{kind} ({'client' if client_mode else 'server'} mode), {len(batch)} items: "
            f"reserved {reserved}, first request {budgets[0]}"
        )
