"""The life of a catalog job once the stage sent it: the POST, the store write of its id, the
status polls, and what becomes of each entry (accepted, sent again as the other action, gone,
or a dead letter); and stored jobs of others (a crash, another replica) followed to their end.

A mixin of `CatalogStage` (`stream.catalog.stage`), which keeps the slots and decides what each
outcome means for them (`_accepted`, `_again`, `_dead`, `_release_slot`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from stream.catalog import jobs
from stream.catalog.entries import Entry, Job, Slot
from stream.core.errors import (
    CatalogJobUnknown,
    CatalogResourceFailed,
    ConfigError,
    FatalDeliveryError,
    InvalidRequest,
    KlaviyoError,
)
from stream.core.retry import Waiting, until_available
from stream.klaviyo.catalog import Action, Kind
from stream.klaviyo.client import Requester
from stream.state.catalog import CatalogJob, CatalogState, CatalogStore, Version
from stream.telemetry import metrics

STATE = "state store"
POLL_MAX = 30.0  # the longest wait between two status GETs of one job
MAX_JOB_SECONDS = 1800.0  # a job not complete by then is taken as lost: its versions go again


class JobRunning:
    """Sends, follows and settles jobs for the stage."""

    _store: CatalogStore
    _request: Requester
    _slots: dict[str, Slot]
    _following: set[str]
    _expected: float
    _scale: float
    _waiting: Waiting | None
    _fatal: Callable[[BaseException], None]
    _clock: Callable[[], float]
    _wake: asyncio.Event
    jobs_in_progress: int

    def _accepted(self, entries: list[Entry], action: str) -> None:
        raise NotImplementedError

    def _again(
        self, entries: list[Entry], error: KlaviyoError | None, delay: bool = False
    ) -> None:
        raise NotImplementedError

    def _dead(self, entries: list[Entry], error: KlaviyoError | None) -> None:
        raise NotImplementedError

    def _release_slot(self, key: str) -> None:
        raise NotImplementedError

    def _publish(self) -> None:
        raise NotImplementedError

    async def _job(self, job: Job) -> None:
        try:
            await self._attempt(job)
        except (FatalDeliveryError, ConfigError) as exc:
            self._fatal(exc)  # its entries stay unfinished: read again once fixed
        finally:
            self.jobs_in_progress -= 1
            self._publish()
            self._wake.set()

    async def _attempt(self, job: Job) -> None:
        kind, action = job.kind, job.action
        try:
            encoded = [e.encoded for e in job.entries]
            job_id = await jobs.submit(self._request, kind, action, encoded)
        except InvalidRequest as exc:  # refused at once: the entries it names, else halves
            await self._refused(job, exc)
            return
        except KlaviyoError as exc:
            self._again(job.entries, exc, delay=True)
            return
        started = self._clock()
        members = tuple((e.resource.key, e.version) for e in job.entries)
        stored = CatalogJob(job_id, kind, action, members, time.time())
        await until_available(lambda: self._store.catalog_job_started(stored), STATE,
                              waiting=self._waiting)  # fmt: skip
        try:
            failed = await self._outcome(kind, action, job_id, len(job.entries))
        except KlaviyoError as exc:  # the job's outcome is unknowable: send them again
            await self._over(job_id, [])
            self._again(job.entries, exc)
            return
        metrics.CATALOG_JOB_SECONDS.labels(kind, action).observe(self._clock() - started)
        await self._settle(job, job_id, failed)

    async def _refused(self, job: Job, exc: InvalidRequest) -> None:
        """A 400 for the whole request: fail the entries its pointers name and send the others
        again; without a usable pointer, send each half on its own until the bad one is alone."""
        named = jobs.indices(exc.pointers, job.kind, len(job.entries))
        if named:
            bad = [e for i, e in enumerate(job.entries) if i in named]
            self._dead(bad, exc)
            self._again([e for i, e in enumerate(job.entries) if i not in named], exc)
            return
        if len(job.entries) == 1:
            self._dead(job.entries, exc)
            return
        half = len(job.entries) // 2
        for part in (job.entries[:half], job.entries[half:]):
            await self._attempt(Job(job.kind, job.action, part))

    async def _outcome(
        self, kind: Kind, action: Action, job_id: str, size: int
    ) -> dict[int, CatalogResourceFailed]:
        """Poll a job until it is complete: a first look once a typical job would be done,
        then less and less often."""
        delay = max(self._expected * 1.1, 0.05 * self._scale)
        deadline = self._clock() + MAX_JOB_SECONDS * self._scale
        while True:
            await asyncio.sleep(delay)
            found = await jobs.status(self._request, kind, action, job_id, size)
            if found.finished:
                if found.seconds is not None:  # what Klaviyo took: when to look next time
                    self._expected = 0.8 * self._expected + 0.2 * found.seconds
                return found.failed
            if self._clock() > deadline:
                raise CatalogJobUnknown(f"catalog job {job_id} not complete in time")
            delay = min(delay * 1.5, POLL_MAX * self._scale)

    async def _settle(
        self, job: Job, job_id: str, failed: dict[int, CatalogResourceFailed]
    ) -> None:
        """Per entry: accepted, sent again as the other action, gone, or a dead letter."""
        kind, action = job.kind, job.action
        done = [e for i, e in enumerate(job.entries) if i not in failed]
        refused = [(e, failed[i]) for i, e in enumerate(job.entries) if i in failed]
        present: set[str] = set()
        if refused:
            ids = [e.resource.id for e, _ in refused]
            try:
                present = await jobs.existing(self._request, kind, ids)
            except KlaviyoError as exc:  # cannot tell: try them again as they were
                await self._over(job_id, [(e.resource.key, action != "delete", e.version)
                                          for e in done])  # fmt: skip
                self._accepted(done, action)
                self._again([e for e, _ in refused], exc)
                return
        gone, again, dead = [], [], []
        for current, error in refused:
            there = current.resource.id in present
            current.error = error
            if action == "delete" and not there:
                gone.append(current)
            elif (action == "create") == there:  # refused for what it was: the other action
                metrics.CATALOG_RECOVERED.labels(kind, action).inc()
                again.append(current)
            else:
                dead.append(current)
        accepted = [(e.resource.key, action != "delete", e.version) for e in done]
        accepted += [(e.resource.key, False, e.version) for e in gone]
        await self._over(job_id, accepted)
        self._accepted(done, action)
        self._accepted(gone, "gone")
        for current in again:
            slot = self._slots[current.resource.key]
            slot.state = CatalogState(action == "create", slot.state.version, None)
        self._again(again, None)
        self._dead(dead, None)

    async def _over(self, job_id: str, accepted: list[tuple[str, bool, Version]]) -> None:
        await until_available(lambda: self._store.catalog_job_finished(job_id, accepted), STATE,
                              waiting=self._waiting)  # fmt: skip

    async def _follow(self, job: CatalogJob) -> None:
        """Poll a stored job to its end; record what it did; free its members."""
        kind: Kind = job.kind  # type: ignore[assignment]
        action: Action = job.action  # type: ignore[assignment]
        self.jobs_in_progress += 1
        self._publish()
        accepted: list[tuple[str, bool, Version]] = []
        try:
            try:
                failed = await self._outcome(kind, action, job.id, len(job.members))
                members = enumerate(job.members)
                accepted = [(k, action != "delete", v) for i, (k, v) in members if i not in failed]
            except KlaviyoError:
                pass  # nothing learnt: its members are sent again as the store says
            await self._over(job.id, accepted)
        except (FatalDeliveryError, ConfigError) as exc:
            self._fatal(exc)
            return
        finally:
            self._following.discard(job.id)
            self.jobs_in_progress -= 1
            self._publish()
            self._wake.set()
        done = {key: version for key, _, version in accepted}
        for key, slot in list(self._slots.items()):
            if slot.adopted != job.id:
                continue
            slot.adopted = None
            state = slot.state
            if key in done:
                state = CatalogState(action != "delete", done[key], None)
            slot.state = CatalogState(state.exists, state.version, None)
            self._release_slot(key)

