"""Deliver stage for consent, list and deletion actions: one request per batch, each action
ending delivered or failed (the deliver stage's `Settlement`, through `done` and `fail`).

- a 400 (or 404) whose JSON pointers name entries (`/data/attributes/profiles/data/<i>/…`,
  `/data/<i>/id`) fails those actions and resends the rest; a 400 without a usable pointer is
  bisected down to the bad action; any other refusal fails the batch;
- list changes need Klaviyo profile ids: taken from the person's `profile-import` answers
  (`learn`), else looked up by the person's strongest identifier (`GET /api/profiles?filter=
  equals(…)`), else the profile is made from the identifiers alone (`profile-import`, which
  answers with its id);
- a deletion is one request per person: by the Klaviyo profile id an upsert answered for one of
  its persons, else by its email, else its phone number, else by the ids of the profiles its
  external_id finds (Klaviyo deletes by email, phone_number or profile id). Klaviyo deletes,
  and makes profiles from the jobs it accepted, asynchronously: a confirmation, a settle time
  later, looks every identifier of the person up (`any(email,[…])`, up to 100 values a request,
  many erasures at once) and deletes again, by id, each profile it finds (`found`); the gate
  asks for another round until none is found, and the last round's finding is a failure
  (`DeletionNotConfirmed`, a dead letter).
Every request is the batch's own (`stream.delivery.requests.BatchRequests`): paced, retried.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from stream.core.errors import (
    DeletionNotConfirmed,
    InvalidRequest,
    KlaviyoClientError,
    KlaviyoError,
)
from stream.delivery.actions import Action, ActionBatch
from stream.delivery.batch import Sendable
from stream.delivery.endpoints import endpoint_for
from stream.klaviyo import consent as bodies
from stream.klaviyo.catalog import back_in_stock_body
from stream.klaviyo.client import PROFILE_IMPORT, PROFILES, Requester, Response
from stream.klaviyo.consent import DELETION
from stream.klaviyo.mapping import profile_import_body
from stream.klaviyo.merge import MATCH_ORDER, any_filter, equals_filter
from stream.telemetry import metrics

log = logging.getLogger(__name__)

Done = Callable[[Sequence[Sendable], str], None]
Fail = Callable[[Sequence[Sendable], BaseException, str], None]
Body = Callable[[list[Action]], dict[str, Any]]

_PROFILE_ENTRY = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")
_LIST_ENTRY = re.compile(r"^/data/(\d+)(?:/|$)")
MAX_KNOWN_IDS = 100_000  # person → Klaviyo profile id, remembered from answers (then forgotten)
LOOKUP_VALUES = 100  # values of one `any(…)` lookup (one page of profiles holds them all)


class ActionSender:
    """Sends action batches; remembers the profile ids upsert answers give (`learn`)."""

    def __init__(
        self, *, client_mode: bool = False, confirm_rounds: int = 3, stale_after: float = 3600.0
    ) -> None:
        self.client_mode = client_mode
        self.confirm_rounds = confirm_rounds
        self.stale_after = stale_after
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

    async def send(self, batch: ActionBatch, request: Requester, done: Done, fail: Fail) -> None:
        """Deliver one batch of one kind and request group, each of its requests made by
        `request` (the batch's own: `stream.delivery.requests.BatchRequests`)."""
        await _Sending(self, request).send(batch, done, fail)


class _Sending:
    """One action batch on its way: its requests, and the sender's settings and memory."""

    def __init__(self, sender: ActionSender, request: Requester) -> None:
        self._request = request
        self._client_mode = sender.client_mode
        self._confirm_rounds = sender.confirm_rounds
        self._stale_after = sender.stale_after
        self.profile_ids = sender.profile_ids  # shared: what one batch learns, the next knows
        self.learn = sender.learn

    async def send(self, batch: ActionBatch, done: Done, fail: Fail) -> None:
        """Deliver one batch of one kind and request group."""
        actions = batch.actions
        kind = batch.kind
        endpoint = endpoint_for(kind, len(actions), self._client_mode)
        if kind == "subscribe" and self._client_mode:
            first = actions[0]
            assert first.list_id is not None  # refused before it became an action
            body = bodies.client_subscription_body(
                first.profile, first.channels, first.list_id, first.source
            )
            await self._entries("POST", endpoint, endpoint, actions, lambda _: body, done, fail)
        elif kind == "subscribe":
            try:
                actions = await self._not_stale(actions, endpoint, done)
            except KlaviyoError as exc:
                fail(list(actions), exc, "deliver")
                return
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
        elif kind == "confirm":
            await self._confirm(endpoint, actions, done, fail)
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
        """One deletion for the person: by a known profile id, else by the first lookup."""
        known = [self.profile_ids[p] for p in action.person_ids if p in self.profile_ids]
        try:
            if known:
                targets = [("id", known[0])]
            else:
                attribute, value = action.lookups[0]
                if attribute == "external_id":  # Klaviyo deletes by id: each profile holding it
                    targets = [("id", pid) for pid in await self._lookup(attribute, value)]
                else:
                    targets = [(attribute, value)]
            for attribute, value in targets:
                await self._request(
                    "POST", endpoint, bodies.deletion_body(attribute, value), budget=endpoint
                )
                metrics.DELETIONS.labels("sent").inc()
        except KlaviyoError as exc:
            fail([action], exc, "deliver")
            return
        done([action], endpoint)

    async def _confirm(
        self, endpoint: str, actions: list[Action], done: Done, fail: Fail
    ) -> None:
        """Look up every identifier of these erasures' persons; delete again what is found."""
        wanted: dict[tuple[str, str], list[Action]] = {}
        for action in actions:
            for lookup in action.lookups:
                wanted.setdefault(lookup, []).append(action)
        found: dict[int, set[str]] = {id(a): set() for a in actions}
        try:
            for attribute in ("email", "phone_number", "external_id"):
                values = sorted({v for (k, v) in wanted if k == attribute})
                for start in range(0, len(values), LOOKUP_VALUES):
                    part = values[start : start + LOOKUP_VALUES]
                    for profile_id, value in await self._lookup_any(attribute, part):
                        for action in wanted.get((attribute, value), ()):
                            found[id(action)].add(profile_id)
        except KlaviyoError as exc:
            fail(list(actions), exc, "deliver")
            return
        for action in actions:
            action.found = len(found[id(action)])
            try:
                for profile_id in sorted(found[id(action)]):
                    body = bodies.deletion_body("id", profile_id)
                    await self._request("POST", DELETION, body, budget=DELETION)
                    metrics.DELETIONS.labels("resent").inc()
            except KlaviyoError as exc:
                fail([action], exc, "deliver")
                continue
            if action.found and action.round >= self._confirm_rounds:
                fail([action], DeletionNotConfirmed(
                    f"the person's profile was still found at Klaviyo {action.round} times"
                    f" after deleting it (last: {action.found} profile(s), deleted again)"
                ), "deliver")  # fmt: skip
                continue
            done([action], endpoint)

    async def _lookup_any(self, attribute: str, values: list[str]) -> list[tuple[str, str]]:
        """(profile id, the value it holds) of the profiles holding any of `values`."""
        return [
            (str(p["id"]), str((p.get("attributes") or {}).get(attribute)))
            for p in await self._profiles_any(attribute, values)
        ]

    async def _profiles_any(
        self, attribute: str, values: list[str], *extra: str
    ) -> list[dict[str, Any]]:
        """The profiles holding any of `values` (with `extra` additional fields), every page."""
        path = PROFILES + any_filter(attribute, values) + "&page[size]=100"
        if extra:
            path += "&additional-fields[profile]=" + ",".join(extra)
        out: list[dict[str, Any]] = []
        while path:
            response = await self._request("GET", path, budget=PROFILES)
            body = response.body if isinstance(response.body, dict) else {}
            out += [p for p in body.get("data") or [] if isinstance(p, dict) and p.get("id")]
            nxt = (body.get("links") or {}).get("next")
            path = _relative(nxt) if isinstance(nxt, str) and nxt else ""
        return out

    # stale subscriptions ---------------------------------------------------------------------

    async def _not_stale(self, actions: list[Action], endpoint: str, done: Done) -> list[Action]:
        """A subscription that is a historical import, or whose call is older than
        `stale_after` when it leaves, may carry consent given before the person opted out at
        Klaviyo (an unsubscribe link we never saw), and a subscription lifts that opt-out: the
        profiles' consent is read first, and each channel Klaviyo holds a newer opt-out or
        suppression for is left out (counted, logged without the address); an action left
        with no channel is done."""
        now = time.time()
        stale = [a for a in actions if _called_at(a) and (
            a.consented_at is not None or _called_at(a) < now - self._stale_after
        )]  # fmt: skip
        if not stale:
            return actions
        held: dict[tuple[str, str], dict[str, Any]] = {}
        for attribute, channel in (("email", "email"), ("phone_number", "sms")):
            values = sorted({str(a.profile[attribute]) for a in stale
                             if channel in a.channels and a.profile.get(attribute)})  # fmt: skip
            for start in range(0, len(values), LOOKUP_VALUES):
                part = values[start : start + LOOKUP_VALUES]
                for profile in await self._profiles_any(attribute, part, "subscriptions"):
                    attributes = profile.get("attributes") or {}
                    value = attributes.get(attribute)
                    subscriptions = attributes.get("subscriptions") or {}
                    held[(channel, str(value))] = subscriptions.get(channel) or {}
        out: list[Action] = []
        skipped: list[Action] = []
        for action in actions:
            if action not in stale:
                out.append(action)
                continue
            keep = []
            for channel in action.channels:
                attribute = "email" if channel == "email" else "phone_number"
                record = held.get((channel, str(action.profile.get(attribute))), {})
                if _opted_out_since(record, _called_at(action)):
                    metrics.STALE_SUBSCRIBES.labels(channel).inc()
                    log.warning(
                        "a subscription older than the person's opt-out at Klaviyo: not sent",
                        extra={"channel": channel},
                    )
                else:
                    keep.append(channel)
            if keep:
                action.channels = tuple(keep)
                out.append(action)
            else:
                skipped.append(action)
        if skipped:
            done(list(skipped), endpoint)
        return out


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


def _called_at(action: Action) -> float:
    """The time of the call an action came from (0: unknown, never judged stale)."""
    if action.consented_at is not None:
        return _seconds(action.consented_at)
    return action.records[0].called_at if action.records else 0.0


def _seconds(text: Any) -> float:
    """An ISO-8601 time Klaviyo gives as Unix seconds (0 when there is none)."""
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _opted_out_since(record: dict[str, Any], since: float) -> bool:
    """Whether a profile's consent for one channel (Klaviyo's `subscriptions.<channel>`)
    holds an opt-out or a suppression newer than `since`."""
    marketing = record.get("marketing") or {}
    if marketing.get("consent") == "UNSUBSCRIBED":
        when = _seconds(marketing.get("consent_timestamp"))
        if (when or _seconds(marketing.get("last_updated"))) > since:
            return True
    return any(
        isinstance(s, dict) and _seconds(s.get("timestamp")) > since
        for s in marketing.get("suppression") or ()
    )


def _relative(link: str) -> str:
    """A `links.next` URL as the path and query the client sends."""
    parts = urlsplit(link)
    return parts.path + ("?" + parts.query if parts.query else "")
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
    if kind == "confirm":
        attribute, value = action.lookups[0]
        return "GET", PROFILES + any_filter(attribute, [value]), {}
    attribute, value = action.lookups[0]
    if attribute == "external_id":
        return "POST", bodies.DELETION, bodies.deletion_body("id", profile_id)
    return "POST", bodies.DELETION, bodies.deletion_body(attribute, value)
