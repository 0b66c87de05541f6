"""The deliver stage's requests: one table from error to reaction, and the batch's own slot.

Each answer Klaviyo gives (as the client turns it into an error) has one reaction; through the
real deliverer and client into the sandbox, each reaction does what it says: STOP stops the
service after one request, FAIL fails the items after one, RETRY tries again up to the policy's
attempts, a 429 waiting on the governor's hold (its Retry-After) rather than a backoff. A batch's
first request to the endpoint the send stage reserved spends that slot, once, whatever the
batch asked on other budgets first, and two batches in flight at once each spend their own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from stream.core.calls import Call, Record
from stream.core.errors import (
    FatalDeliveryError,
    InvalidRequest,
    KlaviyoError,
    KlaviyoServerError,
    KlaviyoUnavailable,
    RateLimited,
    RevisionRefused,
)
from stream.core.retry import RetryPolicy
from stream.core.settings import SANDBOX_API_KEY
from stream.delivery.actions import Action, ActionBatch
from stream.delivery.batch import Batch, Item
from stream.delivery.deliver import Deliverer
from stream.delivery.reactions import FAIL, RETRY, STOP, Reaction, Verdict, react, stop_error
from stream.klaviyo import mapping
from stream.klaviyo.client import EVENTS, EVENTS_BULK, KlaviyoClient, error_for
from stream.klaviyo.consent import LIST_ADD
from stream.klaviyo.governor import Governor
from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from tests.support import sandbox_get
from tests.support.fake_clock import FakeClock
from tests.support.harness import stats
from tests.support.sandbox import faults

QUICK = RetryPolicy(base_seconds=0.01, factor=1.5, max_total_seconds=60, max_attempts=4)
PARAMETER = {"code": "invalid", "detail": "bad revision", "source": {"parameter": "revision"}}
POINTER = {"code": "invalid", "detail": "bad time", "source": {"pointer": "/data/attributes/time"}}


def _answer(status: int, *errors: dict[str, Any], retry_after: str | None = None) -> KlaviyoError:
    return error_for(status, {"errors": list(errors)}, retry_after)


@pytest.mark.parametrize(
    ("error", "reaction"),
    [
        (_answer(401), STOP),
        (_answer(403), STOP),
        (_answer(400, PARAMETER), STOP),  # every request would be refused alike
        (_answer(400, PARAMETER, POINTER), FAIL),  # a field of this request is named
        (_answer(400, POINTER), FAIL),
        (_answer(400), FAIL),
        (_answer(404), FAIL),
        (_answer(409, {"code": "duplicate_profile"}), FAIL),
        (_answer(429, retry_after="7"), Reaction(Verdict.RETRY, throttle=7.0)),
        (_answer(500), RETRY),
        (_answer(503), RETRY),
        (KlaviyoUnavailable("POST /api/events: TimeoutError"), RETRY),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, KlaviyoError) else str(v),
)
def test_each_answer_has_one_reaction(error: KlaviyoError, reaction: Reaction) -> None:
    assert react(error) == reaction


def test_a_stop_names_its_cause() -> None:
    refused = stop_error(_answer(401, {"code": "not_authenticated", "detail": "bad key"}))
    assert isinstance(refused, FatalDeliveryError) and "401" in str(refused)
    revision = stop_error(_answer(400, PARAMETER))
    assert isinstance(revision, RevisionRefused)
    assert "revision" in str(revision) and "KLAVIYO_REVISION" in str(revision)


def _event(n: int) -> Item:
    call = Call("track", f"react-{n}", "2026-01-01T00:00:00+00:00", user_id=f"u{n}", event="E")
    return Item("events", {"external_id": f"u{n}"}, mapping.event_attributes(call),
                [Record("t", 0, n)])  # fmt: skip


async def _send_one(
    fail: int | None = None, revision: str = "2026-07-15", key: str = SANDBOX_API_KEY
) -> tuple[KlaviyoError | BaseException, int, list[float]]:
    """Send one event whose request the sandbox answers with `fail`: (the error its item failed
    with, or the error `send` raised; requests the sandbox received; the governor's waits)."""
    clock = FakeClock()
    governor = Governor(clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        if fail is not None:
            await faults(sandbox.url, fail={"create_event": fail})
        async with KlaviyoClient(sandbox.url, SecretStr(key), revision) as client:
            deliverer = Deliverer(client, retry=QUICK, governor=governor)
            try:
                settled = await deliverer.send(Batch("events", [_event(1)]))
            except Exception as exc:
                outcome: BaseException = exc
            else:
                [failure] = settled.failed
                outcome = failure.error
        tried = (await stats(sandbox.url))["requests_total"]
    return outcome, tried, clock.sleeps


async def test_stop_stops_after_one_request() -> None:
    revision, tried, _ = await _send_one(revision="2026-03-03")  # not a published revision
    assert isinstance(revision, RevisionRefused) and tried == 1
    refused, tried, _ = await _send_one(key="pk_wrong_0000000000000000000000000000")
    assert isinstance(refused, FatalDeliveryError) and tried == 1
    assert "pk_wrong" not in str(refused), "the key never shows in an error"


async def test_fail_fails_after_one_request() -> None:
    error, tried, _ = await _send_one(fail=400)
    assert isinstance(error, InvalidRequest) and error.attempts == 1 == tried


async def test_retry_tries_the_policys_attempts_a_429_waiting_on_the_governor() -> None:
    error, tried, waits = await _send_one(fail=500)
    assert isinstance(error, KlaviyoServerError) and error.attempts == QUICK.max_attempts == tried
    pace = Governor().interval(EVENTS)
    assert all(w <= pace for w in waits), "a 5xx waits a backoff: the governor only paces"
    error, tried, waits = await _send_one(fail=429)
    assert isinstance(error, RateLimited) and error.attempts == QUICK.max_attempts == tried
    # each retry waited for the governor's hold of the endpoint: the sandbox's Retry-After (1 s)
    assert waits == [pytest.approx(1.0)] * (QUICK.max_attempts - 1)


async def _no_slot_free(governor: Governor, endpoint: str) -> None:
    while governor.delay(endpoint) == 0:  # the catch-up tolerance is used up
        await governor.acquire(endpoint)


async def test_two_batches_at_once_each_spend_their_own_reserved_slot() -> None:
    clock = FakeClock()
    governor = Governor(clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    await _no_slot_free(governor, EVENTS_BULK)
    async with (
        SandboxServer(SandboxConfig(rate_limits=False)) as sandbox,
        KlaviyoClient(sandbox.url, SecretStr(SANDBOX_API_KEY), "2026-07-15") as client,
    ):
        deliverer = Deliverer(client, governor=governor)
        batches = []
        for n in (0, 2):  # the send stage reserves each batch's slot as it comes
            clock.now += governor.interval(EVENTS_BULK)
            await governor.acquire(EVENTS_BULK)
            batches.append(Batch("events", [_event(n), _event(n + 1)], reserved=EVENTS_BULK))
        settled = await asyncio.gather(*(deliverer.send(b) for b in batches))
    assert [len(s.delivered) for s in settled] == [2, 2]
    assert clock.sleeps == [], "a batch took a second slot (or another batch's)"


async def test_a_lookup_first_leaves_the_reserved_slot_to_the_batchs_own_request() -> None:
    """A list change looks its person's profile up (and makes it) on their own budgets first;
    the list request then spends the slot reserved for it."""
    clock = FakeClock()
    governor = Governor(clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    await _no_slot_free(governor, LIST_ADD)
    clock.now += governor.interval(LIST_ADD)
    await governor.acquire(LIST_ADD)  # the send stage's reservation
    action = Action("list_add", {"email": "ann@x.io"}, None, [Record("t", 0, 1)], person="P1",
                    list_id="LstNws")  # fmt: skip
    config = SandboxConfig(rate_limits=False, lists=(SeedList("LstNws", "News"),))
    async with SandboxServer(config) as sandbox:
        async with KlaviyoClient(sandbox.url, SecretStr(SANDBOX_API_KEY), "2026-07-15") as client:
            settled = await Deliverer(client, governor=governor).send(
                ActionBatch("list_add", [action], reserved=LIST_ADD)
            )
        log = (await sandbox_get(sandbox.url, "/sandbox/requests"))["requests"]
    assert settled.delivered == [action]
    assert [(r["method"], r["path"]) for r in log][-1] == (
        "POST", "/api/lists/LstNws/relationships/profiles"
    )
    assert len(log) > 1, "the profile was looked up first"
    assert clock.sleeps == [], "the list request took a second slot"
