"""Deliver stage for consent, list and deletion actions: one request per batch, each action
ending delivered or failed (the deliver stage's `Settlement`, through `done` and `fail`).

- a 400 (or 404) whose JSON pointers name entries (`/data/attributes/profiles/data/<i>/…`,
  `/data/<i>/id`) fails those actions and resends the rest; a 400 without a usable pointer is
  bisected down to the bad action; any other refusal fails the batch;
- list changes need Klaviyo profile ids: taken from the person's `profile-import` answers
  (`learn`), else looked up by the person's strongest identifier (`GET /api/profiles?filter=
  equals(…)`), else the profile is made from the identifiers alone (`profile-import`, which
  answers with its id);
- a deletion by `external_id` (Klaviyo deletes by email, phone_number or profile id) deletes
  each profile the lookup finds by it; none found, nothing to delete. Klaviyo deletes
  asynchronously: a deletion is answered once a lookup no longer finds the profile (polled with
  backoff, at most `DELETION_WAIT_SECONDS`), so what the person does next (held by the gate
  until then) never lands on the profile being deleted.
Every request goes through the deliver stage's paced, retried `request`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from stream.core.errors import InvalidRequest, KlaviyoClientError, KlaviyoError
from stream.core.retry import DEFAULT, RetryPolicy
from stream.delivery.actions import Action, ActionBatch
from stream.delivery.batch import Item
from stream.klaviyo import consent as bodies
from stream.klaviyo.catalog import back_in_stock_body
from stream.klaviyo.client import PROFILE_IMPORT, PROFILES, Requester, Response
from stream.klaviyo.mapping import profile_import_body
from stream.klaviyo.merge import MATCH_ORDER, equals_filter

log = logging.getLogger(__name__)

Done = Callable[[list[Item], str], None]
Fail = Callable[[list[Item], BaseException, str], None]
Body = Callable[[list[Action]], dict[str, Any]]

_PROFILE_ENTRY = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")
_LIST_ENTRY = re.compile(r"^/data/(\d+)(?:/|$)")
MAX_KNOWN_IDS = 100_000  # person → Klaviyo profile id, remembered from answers (then forgotten)
DELETION_WAIT_SECONDS = 60.0  # how long a deletion may take to land before we stop waiting


class ActionSender:
    """Sends action batches; remembers the profile ids upsert answers give (`learn`)."""

    def __init__(
        self,
        request: Requester,
        *,
        client_mode: bool = False,
        policy: RetryPolicy = DEFAULT,
        deletion_wait: float = DELETION_WAIT_SECONDS,
    ) -> None:
        self._request = request
        self._client_mode = client_mode
        self._policy = policy
        self._deletion_wait = deletion_wait
        self.profile_ids: dict[str, str] = {}

    def learn(self, person: str | None, response: Response) -> None:
        """A profile upsert of `person` was answered: remember the profile's id, if given."""
        if person is None or not isinstance(response.body, dict):
            return
        data = response.body.get("data")
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            if len(self.profile_ids) >= MAX_KNOWN_IDS:
                self.profile_ids.clear()
            self.profile_ids[person] = data["id"]

    async def send(self, batch: ActionBatch, done: Done, fail: Fail) -> None:
        """Deliver one batch of one kind and request group."""
        actions = batch.actions
        kind = batch.kind
        endpoint = bodies.endpoint_of(kind, self._client_mode)
        if kind == "subscribe" and self._client_mode:
            first = actions[0]
            assert first.list_id is not None  # refused before it became an action
            body = bodies.client_subscription_body(
                first.profile, first.channels, first.list_id, first.source
            )
            await self._entries("POST", endpoint, endpoint, actions, lambda _: body, done, fail)
        elif kind == "subscribe":
            await self._entries("POST", endpoint, endpoint, actions, _subscribe, done, fail)
        elif kind == "unsubscribe":
            await self._entries("POST", endpoint, endpoint, actions, _unsubscribe, done, fail)
        elif kind == "suppress" or kind == "unsuppress":
            lift = kind == "unsuppress"

            def suppression(part: list[Action]) -> dict[str, Any]:
                return bodies.suppression_body([a.profile["email"] for a in part], lift)

            await self._entries("POST", endpoint, endpoint, actions, suppression, done, fail)
        elif kind == "list_add" or kind == "list_remove":
            await self._lists(kind, endpoint, actions, done, fail)
        elif kind == "back_in_stock":  # one subscription a request
            await self._entries("POST", endpoint, endpoint, actions, _stock, done, fail)
        else:
            for action in actions:
                await self._delete(endpoint, action, done, fail)

    # entries of one request ----------------------------------------------------------------

    async def _entries(
        self,
        method: str,
        path: str,
        endpoint: str,
        actions: list[Action],
        body: Body,
        done: Done,
        fail: Fail,
        pointer: re.Pattern[str] = _PROFILE_ENTRY,
    ) -> None:
        if not actions:
            return
        try:
            await self._request(method, path, body(actions), budget=endpoint)
        except KlaviyoClientError as exc:
            bad = _named(exc, actions, pointer)
            if bad:
                fail(list(bad), exc, "deliver")
                rest = [a for a in actions if a not in bad]
                await self._entries(method, path, endpoint, rest, body, done, fail, pointer)
            elif isinstance(exc, InvalidRequest) and len(actions) > 1 and not exc.pointers:
                half = len(actions) // 2
                for part in (actions[:half], actions[half:]):
                    await self._entries(method, path, endpoint, part, body, done, fail, pointer)
            else:
                fail(list(actions), exc, "deliver")
            return
        except KlaviyoError as exc:
            fail(list(actions), exc, "deliver")
            return
        done(list(actions), endpoint)

    # lists ------------------------------------------------------------------------------------

    async def _lists(
        self, kind: str, endpoint: str, actions: list[Action], done: Done, fail: Fail
    ) -> None:
        ids: dict[int, str] = {}
        ready: list[Action] = []
        for action in actions:
            try:
                ids[id(action)] = await self._profile_id(action)
            except KlaviyoError as exc:
                fail([action], exc, "deliver")
                continue
            ready.append(action)
        list_id = ready[0].list_id if ready else None
        if list_id is None:
            return
        method = "POST" if kind == "list_add" else "DELETE"

        def body(part: list[Action]) -> dict[str, Any]:
            return bodies.list_body([ids[id(a)] for a in part])

        path = bodies.list_path(list_id)
        await self._entries(method, path, endpoint, ready, body, done, fail, _LIST_ENTRY)

    async def _profile_id(self, action: Action) -> str:
        """The person's Klaviyo profile id: from an upsert's answer, else a lookup by the
        strongest identifier, else made from the identifiers alone."""
        known = self.profile_ids.get(action.person or "")
        if known is not None:
            return known
        for key in MATCH_ORDER:
            value = action.profile.get(key)
            if value:
                found = await self._lookup(key, str(value))
                if found:
                    return found[0]
        identifiers = {k: action.profile[k] for k in MATCH_ORDER if action.profile.get(k)}
        response = await self._request(
            "POST", PROFILE_IMPORT, profile_import_body(identifiers), budget=PROFILE_IMPORT
        )
        self.learn(action.person, response)
        made = self.profile_ids.get(action.person or "")
        if made is None:
            raise KlaviyoClientError("Klaviyo answered the profile upsert without a profile id")
        return made

    async def _lookup(self, attribute: str, value: str) -> list[str]:
        """Ids of the profiles holding `attribute` = `value` (usually one)."""
        path = PROFILES + equals_filter(attribute, value)
        response = await self._request("GET", path, budget=PROFILES)
        data = response.body.get("data") if isinstance(response.body, dict) else None
        return [str(p["id"]) for p in data or [] if isinstance(p, dict) and p.get("id")]

    # deletion ---------------------------------------------------------------------------------

    async def _delete(self, endpoint: str, action: Action, done: Done, fail: Fail) -> None:
        assert action.target is not None
        attribute, value = action.target
        try:
            if attribute == "external_id":  # Klaviyo deletes by id: each profile holding it
                for profile_id in await self._lookup(attribute, value):
                    body = bodies.deletion_body("id", profile_id)
                    await self._request("POST", endpoint, body, budget=endpoint)
                    await self._gone("id", profile_id)
            else:
                body = bodies.deletion_body(attribute, value)
                await self._request("POST", endpoint, body, budget=endpoint)
                await self._gone(attribute, value)
        except KlaviyoError as exc:
            fail([action], exc, "deliver")
            return
        done([action], endpoint)

    async def _gone(self, attribute: str, value: str) -> None:
        """Wait (bounded) until no profile holds `attribute` = `value`: the deletion landed."""
        deadline = time.monotonic() + self._deletion_wait
        attempt = 0
        while await self._lookup(attribute, value):
            delay = self._policy.delay(attempt)
            attempt += 1
            if time.monotonic() + delay > deadline:
                log.warning(
                    "a deletion has not landed at Klaviyo yet; not waiting for it any longer",
                    extra={"identifier": attribute, "waited": self._deletion_wait},
                )
                return
            await asyncio.sleep(delay)


def _subscribe(part: list[Action]) -> dict[str, Any]:
    first = part[0]
    entries = [
        bodies.consent_entry(a.profile, a.channels, "SUBSCRIBED", a.consented_at) for a in part
    ]
    return bodies.subscribe_body(entries, first.list_id, first.consented_at is not None,
                                 first.source)  # fmt: skip


def _unsubscribe(part: list[Action]) -> dict[str, Any]:
    return bodies.unsubscribe_body(
        [bodies.consent_entry(a.profile, a.channels, "UNSUBSCRIBED") for a in part]
    )


def _stock(part: list[Action]) -> dict[str, Any]:
    [action] = part
    assert action.variant is not None
    return back_in_stock_body(action.profile, action.variant, action.channels)


def _named(
    exc: KlaviyoClientError, actions: Sequence[Action], pointer: re.Pattern[str]
) -> list[Action]:
    """The actions a refusal's JSON pointers name (by their entry's index), in order."""
    named: dict[int, Action] = {}
    for text in exc.pointers:
        match = pointer.match(text)
        if match is None:
            return []  # a pointer at the request itself (its list, say): not one entry's fault
        index = int(match.group(1))
        if index >= len(actions):
            return []
        named[index] = actions[index]
    return [named[i] for i in sorted(named)]


PROFILE_ID = "<profile id>"  # stands for an id only known when sending (the event tester)


def single_request(
    action: Action, client_mode: bool = False, profile_id: str = PROFILE_ID
) -> tuple[str, str, dict[str, Any]]:
    """(method, path, body) of the request `action` makes when it goes alone; a list change,
    or a deletion by external_id, names `profile_id` (the one a lookup finds)."""
    kind = action.kind
    if kind == "subscribe" and client_mode:
        assert action.list_id is not None
        body = bodies.client_subscription_body(
            action.profile, action.channels, action.list_id, action.source
        )
        return "POST", bodies.CLIENT_SUBSCRIPTIONS, body
    if kind == "subscribe":
        return "POST", bodies.SUBSCRIBE, _subscribe([action])
    if kind == "unsubscribe":
        return "POST", bodies.UNSUBSCRIBE, _unsubscribe([action])
    if kind == "suppress" or kind == "unsuppress":
        body = bodies.suppression_body([action.profile["email"]], kind == "unsuppress")
        return "POST", bodies.endpoint_of(kind), body
    if kind == "back_in_stock":
        return "POST", bodies.endpoint_of(kind, client_mode), _stock([action])
    if kind == "list_add" or kind == "list_remove":
        assert action.list_id is not None
        method = "POST" if kind == "list_add" else "DELETE"
        return method, bodies.list_path(action.list_id), bodies.list_body([profile_id])
    assert action.target is not None
    attribute, value = action.target
    if attribute == "external_id":
        return "POST", bodies.DELETION, bodies.deletion_body("id", profile_id)
    return "POST", bodies.DELETION, bodies.deletion_body(attribute, value)
