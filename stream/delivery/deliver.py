"""Deliver stage: send one batch to Klaviyo and say what became of each of its items.

`Deliverer.send(batch)` returns a `Settlement`: the items Klaviyo accepted and the ones that
failed, with the error and the stage to name in their dead letters. The completion ledger acts on
it; the deliverer never calls back into the service.
- what an error answer does (retried with backoff or after `Retry-After`, failed, or stopping
  the service: `FatalDeliveryError`, `RevisionRefused`) is the one table of
  `stream.delivery.reactions`; retries are bounded in attempts and time (`stream.core.retry`);
- a 400 on a bulk request: the entries its JSON pointers name fail and the rest is resent; a
  400 without a usable pointer is bisected until the bad record is alone.
Consent, list and deletion actions are delivered by `stream.delivery.deliver_actions` (the
profile ids it needs come from the profile-import answers seen here).
Every request of a batch, merges and import-job polls included, goes through the batch's
`BatchRequests` (`stream.delivery.requests`: paced, bounded in flight, retried as
`stream.delivery.reactions` says), whose first request to the endpoint the send stage reserved a
slot of (`Batch.reserved`) spends that slot; where each request goes is
`stream.delivery.endpoints`' decision, the one the send stage reserved by. `Deliverer.request`
is one such request outside any batch (the catalog stage, the operator tools).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.completion.ledger import ended
from stream.core.errors import (
    DuplicateProfile,
    InvalidRequest,
    KlaviyoClientError,
    KlaviyoError,
)
from stream.core.retry import RetryPolicy
from stream.delivery.actions import ActionBatch
from stream.delivery.batch import Batch, Item, Sendable
from stream.delivery.deliver_actions import ActionSender
from stream.delivery.endpoints import endpoint_for
from stream.delivery.requests import BatchRequests, PartitionMoved, Requests, Watch
from stream.klaviyo import mapping
from stream.klaviyo.client import (
    CLIENT_EVENTS,
    CLIENT_PROFILES,
    EVENTS,
    PROFILE_IMPORT,
    KlaviyoClient,
    Response,
)
from stream.klaviyo.governor import Governor
from stream.klaviyo.importjob import import_failures
from stream.klaviyo.merge import (
    merge_duplicate,
    profile_identifiers,
    strongest_alone,
    wait_merged,
)
from stream.telemetry import metrics

MERGE_ATTEMPTS = 3
_BULK_POINTER = re.compile(
    r"^/data/attributes/events-bulk-create/data/(\d+)(?:/attributes/events/data/(\d+))?"
)


# (our profile's identifiers, another Klaviyo profile's) -> one person in our identity graph?
SamePerson = Callable[[dict[str, Any], dict[str, str]], bool]


@dataclass(slots=True)
class Failure:
    """Items that cannot be sent, why, and the stage their dead letters name."""

    items: list[Sendable]
    error: BaseException
    stage: str


@dataclass(slots=True)
class Settlement:
    """What became of a batch's items: each is in exactly one of the lists (`cancelled`: its
    partition was revoked past the drain bound while it waited to be tried again; `kept`: its
    account's trouble left it unsent, parked by the deliver stage's caller)."""

    delivered: list[Sendable] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    cancelled: list[Sendable] = field(default_factory=list)
    kept: list[Sendable] = field(default_factory=list)  # parked (`stream.engine.parking`)

    @property
    def settled(self) -> list[Sendable]:
        """The items with an answer so far: delivered, failed or cancelled."""
        return [*self.delivered, *(i for f in self.failed for i in f.items), *self.cancelled]

    def done(self, items: Sequence[Sendable], endpoint: str) -> None:
        metrics.RECORDS_SENT.labels(endpoint).inc(len(items))
        self.delivered.extend(items)

    def fail(self, items: Sequence[Sendable], error: BaseException, stage: str) -> None:
        self.failed.append(Failure(list(items), error, stage))


class Deliverer:
    """Sends batches; every item ends delivered or failed in the returned `Settlement`."""

    def __init__(
        self,
        client: KlaviyoClient,
        *,
        max_in_flight: int = 8,
        retry: RetryPolicy | None = None,
        governor: Governor | None = None,
        client_mode: bool = False,
        same_person: SamePerson | None = None,
        confirm_rounds: int = 3,
        stale_subscribe_seconds: float = 3600.0,
        watch: Watch | None = None,
    ) -> None:
        self._same = same_person
        self._retry = retry or RetryPolicy()
        self._requests = Requests(
            client, governor or Governor(), self._retry, max_in_flight, watch
        )
        self._client_mode = client_mode  # public key: /client/ endpoints, one profile a request
        self.actions = ActionSender(
            client_mode=client_mode, confirm_rounds=confirm_rounds,
            stale_after=stale_subscribe_seconds,
        )  # fmt: skip

    async def request(
        self, method: str, path: str, body: Any = None, *, budget: str
    ) -> Response:
        """One paced, retried request outside any batch (a `Requester`: the catalog stage, the
        operator tools); raises as `Requests.request`."""
        return await self._requests.request(method, path, body, budget=budget)

    async def send(
        self, batch: Batch | ActionBatch, out: Settlement | None = None
    ) -> Settlement:
        """Deliver one batch. Raises `FatalDeliveryError` / `RevisionRefused` (stop the service).

        A retry is never attempted for an item whose partition was revoked past the drain
        bound meanwhile (`ended`): when one is met, the items not yet settled are sent anew
        without those (cancelled: the partition's next owner reads them again)."""
        out = out if out is not None else Settlement()
        requests = self._requests.of(batch.items, batch.reserved)
        try:
            if isinstance(batch, ActionBatch):  # consent, lists, deletion
                await self.actions.send(batch, requests.request, out.done, out.fail)
            elif self._client_mode:
                await self._client_side(requests, batch.items, out)
            elif batch.kind == "events":
                await self._events(requests, batch.items, out)
            else:
                await self._profiles(requests, batch.items, out)
        except PartitionMoved:
            moved = [item for item in batch.without(out.settled).items if ended(item)]
            out.cancelled += moved
            alive = batch.without([*out.settled])
            alive.reserved = None  # that slot was this try's: the next takes its own
            if alive.items:
                await self.send(alive, out)
        return out

    # client-side mode -------------------------------------------------------------------

    async def _client_side(
        self, requests: BatchRequests, items: list[Item], out: Settlement
    ) -> None:
        """/client/ endpoints: profiles one by one, events one request per profile (its group)."""
        for group in _group(items):
            first = group[0]
            endpoint = endpoint_for(first.kind, len(group), client_mode=True)
            if endpoint == CLIENT_PROFILES:
                for item in group:
                    body = mapping.profile_import_body(item.profile, item.meta)
                    await self._deliver(requests, endpoint, body, [item], out)
            elif endpoint == CLIENT_EVENTS:
                assert first.event is not None
                body = mapping.single_event_body(first.event, first.profile)
                await self._deliver(requests, endpoint, body, group, out)
            else:
                events = [i.event for i in group if i.event is not None]
                body = mapping.client_bulk_events_body(first.profile, events)
                try:
                    await self._post(requests, endpoint, body, len(group))
                except InvalidRequest as exc:
                    await self._bisect(requests, group, exc, self._client_side, out)
                    continue
                except KlaviyoError as exc:
                    out.fail(group, exc, "deliver")
                    continue
                out.done(group, endpoint)

    # events -----------------------------------------------------------------------------

    async def _events(self, requests: BatchRequests, items: list[Item], out: Settlement) -> None:
        if not items:
            return
        endpoint = endpoint_for("events", len(items))
        if endpoint == EVENTS:  # a single event
            item = items[0]
            assert item.event is not None
            body = mapping.single_event_body(item.event, item.profile)
            await self._deliver(requests, endpoint, body, items, out)
            return
        groups = _group(items)
        body = mapping.bulk_events_body(
            [(g[0].profile, [orjson.Fragment(i.encoded) for i in g]) for g in groups]
        )
        try:
            await self._post(requests, endpoint, body, len(items))
        except InvalidRequest as exc:
            bad = _bad_entries(exc, groups)
            if bad:
                out.fail(bad, exc, "deliver")
                bad_ids = {id(b) for b in bad}
                await self._events(requests, [i for i in items if id(i) not in bad_ids], out)
            else:
                await self._bisect(requests, items, exc, self._events, out)
            return
        except KlaviyoError as exc:
            out.fail(items, exc, "deliver")
            return
        out.done(items, endpoint)

    # profiles ---------------------------------------------------------------------------

    async def _profiles(self, requests: BatchRequests, items: list[Item], out: Settlement) -> None:
        endpoint = endpoint_for("profiles", len(items))
        if endpoint == PROFILE_IMPORT:  # a few profiles: one by one
            for item in items:
                body = mapping.profile_import_body(item.profile, item.meta)
                await self._deliver(requests, endpoint, body, [item], out)
            return
        body = mapping.bulk_profiles_body([i.profile for i in items], [i.meta for i in items])
        try:
            response = await self._post(requests, endpoint, body, len(items))
        except InvalidRequest as exc:
            await self._bisect(requests, items, exc, self._profiles, out)
            return
        except KlaviyoError as exc:
            out.fail(items, exc, "deliver")
            return
        try:
            profiles = [i.profile for i in items]
            failures = await import_failures(
                requests.request, response, profiles, self._retry.max_total_seconds
            )
        except KlaviyoError as exc:  # the job's outcome is unknowable: replay is a safe upsert
            out.fail(items, exc, "import-job")
            return
        failed = {index for index in failures if index < len(items)}
        for index in sorted(failed):
            if failures[index].code == "duplicate_profile":
                # a split person: the single upsert answers 409 synchronously and heals it
                body = mapping.profile_import_body(items[index].profile, items[index].meta)
                single = endpoint_for("profiles", 1)
                await self._deliver(requests, single, body, [items[index]], out)
            else:
                out.fail([items[index]], failures[index], "import-job")
        out.done([item for i, item in enumerate(items) if i not in failed], endpoint)

    # shared -----------------------------------------------------------------------------

    async def _deliver(
        self,
        requests: BatchRequests,
        endpoint: str,
        body: dict[str, Any],
        items: list[Item],
        out: Settlement,
    ) -> None:
        try:
            await self._upsert_healing(requests, endpoint, body, items[0], len(items))
        except KlaviyoError as exc:
            out.fail(items, exc, "deliver")
            return
        out.done(items, endpoint)

    async def _upsert_healing(
        self, requests: BatchRequests, endpoint: str, body: dict[str, Any], item: Item, records: int
    ) -> None:
        """POST; on 409 duplicate_profile (one person split over two Klaviyo profiles) merge
        the duplicate into the profile Klaviyo matched, wait until the merge has landed
        (Klaviyo merges asynchronously), and try again (a few times: another consumer may be
        healing the same person). Only a duplicate our identity graph holds as this very
        person is merged; otherwise the upsert goes with the person's strongest identifier
        alone and lands on that person's profile."""
        profile = item.profile
        for _attempt in range(MERGE_ATTEMPTS):
            try:
                self.actions.learn(item.person, await self._post(requests, endpoint, body, records))
                return
            except DuplicateProfile as exc:
                duplicate = exc.duplicate_profile_id
                if duplicate is None:
                    raise
                if not await self._same_person(requests, item, duplicate):
                    metrics.PROFILE_MERGES_REFUSED.inc()
                    alone = mapping.profile_import_body(strongest_alone(profile), item.meta)
                    answer = await self._post(requests, endpoint, alone, records)
                    self.actions.learn(item.person, answer)
                    return
                # KlaviyoClientError: merged meanwhile by another consumer; the next upsert tells
                with contextlib.suppress(KlaviyoClientError):
                    if await merge_duplicate(requests.request, profile, duplicate):
                        await wait_merged(requests.request, duplicate)
        self.actions.learn(item.person, await self._post(requests, endpoint, body, records))

    async def _same_person(self, requests: BatchRequests, item: Item, duplicate: str) -> bool:
        """Whether the duplicate profile's identifiers are this item's person in our graph."""
        if self._same is None or item.person is None:
            return True
        theirs = await profile_identifiers(requests.request, duplicate)
        return self._same(item.profile, theirs)

    async def _bisect(
        self,
        requests: BatchRequests,
        items: list[Item],
        exc: KlaviyoError,
        send: Callable[[BatchRequests, list[Item], Settlement], Awaitable[None]],
        out: Settlement,
    ) -> None:
        if len(items) == 1:
            out.fail(items, exc, "deliver")
            return
        half = len(items) // 2
        await send(requests, items[:half], out)
        await send(requests, items[half:], out)

    async def _post(
        self, requests: BatchRequests, endpoint: str, body: dict[str, Any], records: int
    ) -> Response:
        response = await requests.request("POST", endpoint, body, budget=endpoint)
        metrics.BATCH_SIZE.labels(endpoint).observe(records)
        return response


def _group(items: list[Item]) -> list[list[Item]]:
    """Items grouped per profile, groups in first-seen order (the bulk request's order)."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.group_key, []).append(item)
    return list(groups.values())


def _bad_entries(exc: KlaviyoClientError, groups: list[list[Item]]) -> list[Item]:
    """Items named by the 400's pointers: one event (`…/events/data/<j>`) or a whole group."""
    bad: dict[int, Item] = {}
    for pointer in exc.pointers:
        match = _BULK_POINTER.match(pointer)
        if match is None:
            return []  # a pointer we cannot place: let the caller bisect
        g = int(match.group(1))
        if g >= len(groups):
            return []
        if match.group(2) is None:
            bad.update((id(i), i) for i in groups[g])
        elif int(match.group(2)) < len(groups[g]):
            item = groups[g][int(match.group(2))]
            bad[id(item)] = item
    return list(bad.values())
