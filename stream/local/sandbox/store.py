"""The sandbox's account: events, lists, queued merges and deletions, and import jobs.

All methods are synchronous and run on the event loop thread, so each call is atomic: a
bulk request either changes nothing (it raises before the first write) or is fully applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from .consent import ConsentJob, MailingList, merged_consents
from .profiles import (
    IDENTIFIERS,
    Profile,
    ProfileBook,
    ProfileConflict,
    ProfileNotFound,
    norm,
)
from .stamps import iso, new_id
from .tasks import APPLIED, PENDING, SKIPPED, DeletionTask, MergeTask
from .validation import parse_time

_UTC_SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\+00:00")


def _utc_second(text: Any) -> datetime | None:
    """`text` parsed, if it is a valid time already in its stored form (UTC, whole seconds).

    Then `iso` of it is `text` itself: the common case skips the general parse and format.
    """
    if isinstance(text, str) and _UTC_SECOND.fullmatch(text):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None
    return None


class DuplicateUniqueId(Exception):
    """A unique_id repeated for one profile and metric inside one bulk request."""

    def __init__(self, entry: int, event: int, unique_id: str) -> None:
        super().__init__(f"unique_id {unique_id!r} repeated in this request")
        self.entry = entry
        self.event = event
        self.unique_id = unique_id


class EventGroup(NamedTuple):
    """One profile and its events' attributes, as a request carries them (never modified)."""

    profile: dict[str, Any]
    events: list[dict[str, Any]]
    backfill: bool = False  # the bulk entry's `backfill`: what its events without one get


@dataclass(slots=True)
class Event:
    """One recorded event."""

    id: str
    profile_id: str
    metric: str
    properties: dict[str, Any]
    time: str
    value: float | None
    value_currency: str | None
    unique_id: str | None
    backfill: bool
    received: str


@dataclass(frozen=True)
class DeletedProfile:
    """What is left of a profile after a data-privacy deletion: who it was and when it went."""

    id: str
    identifiers: dict[str, Any]
    merged_ids: list[str]
    events_deleted: int
    deleted_at: str
    task_id: str


@dataclass
class ImportJob:
    """A profile bulk import job and its per-record outcome."""

    id: str
    created_at: str
    total_count: int
    status: str = "queued"
    started_at: str | None = None
    completed_at: str | None = None
    expires_at: str | None = None
    completed_count: int = 0
    failed_count: int = 0
    profile_ids: list[str] = field(default_factory=list)
    list_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


class Store(ProfileBook):
    """Everything the sandbox account holds; `reset()` empties it."""

    def reset(self) -> None:
        """Forget every profile, event, merge and job."""
        super().reset()
        self.events: list[Event] = []
        self.event_keys: dict[str, set[tuple[str, str]]] = {}
        self.jobs: dict[str, ImportJob] = {}
        self.refused_duplicates = 0
        self.merges = 0  # applied merges
        self.merge_tasks: list[MergeTask] = []
        self.lists: dict[str, MailingList] = {}
        self.deletion_tasks: list[DeletionTask] = []
        self.deleted: list[DeletedProfile] = []
        self.consent_jobs: list[ConsentJob] = []

    # events --------------------------------------------------------------------------------

    def _provisional_key(self, data: dict[str, Any], aliases: dict[tuple[str, str], str]) -> str:
        """Who an event entry belongs to, without writing anything (for in-request dedup)."""
        matches = self._matches(data, IDENTIFIERS)
        if matches:
            return matches[0][1]
        attrs = data.get("attributes") or {}
        keys = [(n, norm(n, attrs[n])) for n in IDENTIFIERS if isinstance(attrs.get(n), str)]
        key = next((aliases[k] for k in keys if k in aliases), f"new:{len(aliases)}")
        for k in keys:
            aliases.setdefault(k, key)
        return key

    def check_events(self, entries: list[EventGroup]) -> None:
        """What `add_events` would refuse, without writing: DuplicateUniqueId when an explicit
        unique_id repeats for one profile and metric inside one request, ProfileNotFound for
        an unknown bare profile id."""
        aliases: dict[tuple[str, str], str] = {}
        seen: set[tuple[str, str, str]] = set()
        for i, (profile_data, events, _) in enumerate(entries):
            owner = self._provisional_key(profile_data, aliases)
            if owner.startswith("new:") and profile_data.get("id"):
                attrs = profile_data.get("attributes") or {}
                if not any(attrs.get(name) for name in IDENTIFIERS):
                    raise ProfileNotFound(profile_data["id"])
            for j, event in enumerate(events):
                unique_id = event.get("unique_id")
                if unique_id is None:
                    continue
                key = (owner, event["metric"]["data"]["attributes"]["name"], unique_id)
                if key in seen:
                    raise DuplicateUniqueId(i, j, unique_id)
                seen.add(key)

    def add_events(self, entries: list[EventGroup], received: datetime) -> tuple[int, int]:
        """Record (profile, events) entries atomically; returns (stored, refused duplicates).

        Raises what `check_events` raises, with nothing stored. An event whose key
        (unique_id, else its time to the second) was already recorded for that profile and
        metric is silently refused.
        """
        self.check_events(entries)
        stored = refused = 0
        received_iso = iso(received)
        for profile_data, events, backfill in entries:
            profile = self.event_profile(profile_data)
            if events:
                added = self._record(profile, events, backfill, received, received_iso)
                stored += added
                refused += len(events) - added
        self.refused_duplicates += refused
        return stored, refused

    def _record(
        self,
        profile: Profile,
        events: list[dict[str, Any]],
        backfill: bool,
        received: datetime,
        received_iso: str,
    ) -> int:
        """Store a profile's events, except those whose dedup key is taken; returns how many.

        The hottest loop of the sandbox: one pass, locals only, no per-event calls it can avoid.
        """
        keys = self.event_keys.setdefault(profile.id, set())
        append = self.events.append
        latest = profile.last_event_date
        added = 0
        for attrs in events:
            text: Any = attrs.get("time")
            moment = _utc_second(text)
            if moment is not None:
                stamp = text
            else:
                when = parse_time(text) if text else None
                moment = (when or received).replace(microsecond=0)
                stamp = iso(moment)
            metric = attrs["metric"]["data"]["attributes"]["name"]
            unique_id = attrs.get("unique_id")
            key = (
                metric,
                f"u:{unique_id}" if unique_id is not None else f"t:{moment.timestamp()}",
            )
            if key in keys:
                continue
            keys.add(key)
            append(
                Event(  # positional: keyword arguments would cost a third of this loop
                    new_id(),
                    profile.id,
                    metric,
                    attrs.get("properties") or {},
                    stamp,
                    attrs.get("value"),
                    attrs.get("value_currency"),
                    unique_id,
                    bool(attrs["backfill"]) if "backfill" in attrs else backfill,
                    received_iso,
                )
            )
            if latest is None or stamp > latest:
                latest = profile.last_event_date = stamp
            added += 1
        return added

    # merges --------------------------------------------------------------------------------

    def queue_merge(self, destination_id: str, source_id: str, due: datetime) -> MergeTask:
        """Check a merge request and queue it; `apply_merge` carries it out later.

        The destination may be a merged id (it resolves to its live profile); the source must
        be a live profile, since a merge deletes its source. Raises ProfileNotFound for an
        unknown or gone id and ValueError when the source is the destination.
        """
        dest_id = self.canonical_id(destination_id)
        if dest_id is None:
            raise ProfileNotFound(destination_id)
        if source_id not in self.profiles:
            raise ProfileNotFound(source_id)
        if source_id == dest_id:
            raise ValueError(f"profile {source_id} is the destination profile")
        now = datetime.now(UTC)
        task = MergeTask(new_id(), dest_id, source_id, iso(now), iso(max(due, now)))
        self.merge_tasks.append(task)
        return task

    def apply_merge(self, task: MergeTask) -> None:
        """Carry out a queued merge, or mark it skipped when it no longer can be.

        The destination follows merges applied since the request (a chain folds into the
        last live profile); a source that is gone (merged by an earlier task, or deleted) or
        that has become the destination is skipped, as a Klaviyo task finding nothing to do.
        """
        if task.status != PENDING:
            return
        task.applied_at = iso(datetime.now(UTC))
        dest_id = self.canonical_id(task.destination_id)
        if task.source_id not in self.profiles:
            task.status, task.note = SKIPPED, "the source profile no longer exists"
        elif dest_id is None:
            task.status, task.note = SKIPPED, "the destination profile no longer exists"
        elif dest_id == task.source_id:
            task.status, task.note = SKIPPED, "the source has become the destination"
        else:
            self._fold(dest_id, task.source_id)
            task.status = APPLIED
            if dest_id != task.destination_id:
                task.note = f"destination {task.destination_id} had been merged into {dest_id}"

    def _fold(self, dest_id: str, source_id: str) -> None:
        """Fold one live profile into another: fill gaps, move events, delete the source."""
        dest = self.profiles[dest_id]
        source = self.profiles.pop(source_id)
        inherited = dict(source.attributes)
        for name in IDENTIFIERS:
            if source.attributes.get(name) is not None:
                self._set_identifier(source, name, None)
        for name, value in inherited.items():
            if value is not None and dest.attributes.get(name) is None:
                if name in IDENTIFIERS:
                    self._set_identifier(dest, name, value)
                else:
                    dest.attributes[name] = value
        for key, value in source.location.items():
            dest.location.setdefault(key, value)
        for key, value in source.properties.items():
            dest.properties.setdefault(key, value)
        for event in self.events:
            if event.profile_id == source_id:
                event.profile_id = dest_id
        self.event_keys.setdefault(dest_id, set()).update(self.event_keys.pop(source_id, set()))
        if source.last_event_date and (dest.last_event_date or "") < source.last_event_date:
            dest.last_event_date = source.last_event_date
        dest.consents = merged_consents(dest.consents, source.consents)
        held = {(s.reason, s.list_id) for s in dest.suppressions}
        dest.suppressions += [s for s in source.suppressions if (s.reason, s.list_id) not in held]
        for mailing_list in self.lists.values():
            added = mailing_list.members.pop(source_id, None)
            if added is not None:
                mailing_list.members.setdefault(dest_id, added)
        dest.merged_ids.extend([source_id, *source.merged_ids])
        self.merged_into[source_id] = dest_id
        self.merges += 1
        dest.updated = iso(datetime.now(UTC))

    # data-privacy deletion ---------------------------------------------------------------

    def queue_deletion(self, kind: str, value: str, due: datetime) -> DeletionTask:
        """Record a deletion request for the profile(s) `kind`=`value`; `apply_deletion` runs it."""
        now = datetime.now(UTC)
        task = DeletionTask(new_id(), kind, value, iso(now), iso(max(due, now)))
        self.deletion_tasks.append(task)
        return task

    def apply_deletion(self, task: DeletionTask) -> None:
        """Delete every profile matching the task's identifier now, with its events and list
        memberships; each is recorded in `deleted`. No match deletes nothing."""
        if task.status != PENDING:
            return
        if task.kind == "id":
            found = self.canonical_id(task.value)
        else:
            found = self.owner(task.kind, task.value)
        stamp = iso(datetime.now(UTC))
        for profile_id in [found] if found is not None else []:
            self.deleted.append(self._remove(profile_id, stamp, task.id))
            task.deleted_ids.append(profile_id)
        task.status, task.applied_at = APPLIED, stamp

    def _remove(self, profile_id: str, stamp: str, task_id: str) -> DeletedProfile:
        """Forget a live profile entirely: identifiers, events, memberships."""
        profile = self.profiles.pop(profile_id)
        kept = {name: profile.attributes.get(name) for name in IDENTIFIERS}
        for name in IDENTIFIERS:
            if profile.attributes.get(name) is not None:
                self._set_identifier(profile, name, None)
        before = len(self.events)
        self.events = [event for event in self.events if event.profile_id != profile_id]
        self.event_keys.pop(profile_id, None)
        for mailing_list in self.lists.values():
            mailing_list.members.pop(profile_id, None)
        return DeletedProfile(
            profile_id, kept, profile.merged_ids, before - len(self.events), stamp, task_id
        )

    # bulk import jobs ----------------------------------------------------------------------

    def new_import(self, total: int, list_ids: list[str]) -> ImportJob:
        """A queued profile bulk import job of `total` profiles; `run_import` processes it."""
        now = datetime.now(UTC)
        job = ImportJob(
            id=new_id(),
            created_at=iso(now),
            total_count=total,
            list_ids=list_ids,
            expires_at=iso(now + timedelta(days=7)),
        )
        self.jobs[job.id] = job
        return job

    def run_import(self, job: ImportJob, profiles: list[dict[str, Any]]) -> None:
        """Process every profile of a queued job now; failures are recorded per record, and
        the imported profiles join the job's lists (lists are never deleted, so they exist)."""
        job.started_at = iso(datetime.now(UTC))
        imported: set[str] = set()
        for index, data in enumerate(profiles):
            try:
                profile, _ = self.upsert_profile(data)
            except ProfileConflict as exc:
                self._import_error(
                    job,
                    index,
                    data,
                    "duplicate_profile",
                    f"A profile already exists with one of these identifiers "
                    f"({exc.field_name}): {exc.duplicate_id}.",
                )
            except ProfileNotFound as exc:
                self._import_error(
                    job, index, data, "not_found", f"Profile {exc.profile_id} does not exist."
                )
            else:
                job.completed_count += 1
                if profile.id not in imported:
                    imported.add(profile.id)
                    job.profile_ids.append(profile.id)
        job.status = "complete"
        job.completed_at = iso(datetime.now(UTC))
        for list_id in job.list_ids:
            members = self.lists[list_id].members
            for profile_id in job.profile_ids:
                members.setdefault(profile_id, job.completed_at)

    @staticmethod
    def _import_error(
        job: ImportJob, index: int, data: dict[str, Any], code: str, detail: str
    ) -> None:
        job.failed_count += 1
        job.errors.append(
            {
                "type": "import-error",
                "id": new_id(),
                "attributes": {
                    "code": code,
                    "title": "Conflict." if code == "duplicate_profile" else "Not found.",
                    "detail": detail,
                    "source": {"pointer": f"/data/attributes/profiles/data/{index}"},
                    "original_payload": data,
                },
            }
        )
