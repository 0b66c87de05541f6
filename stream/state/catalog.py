"""What the state store keeps for the catalog stage: per resource, what Klaviyo accepted last and
the job holding it now; per job in progress, its members (Klaviyo has no endpoint that lists a
client's jobs, so a restarted service learns them here).

A version is where a record was read: (topic, partition, offset). Within one partition the
higher offset is the newer version; across partitions offsets say nothing, and the version
accepted last wins (a resource whose records are all keyed `<kind>:<id>` never has versions on
two partitions). `catalog_job_finished` only ever moves a resource forward: an older version of
its partition accepted after a newer one changes nothing.

Both backends keep one row (hash field) per resource ever accepted, deletions included (so a
second delete is known done): about 60 bytes plus the key and topic names; see docs/catalog.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

Version = tuple[str, int, int]  # (topic, partition, offset) the version was read at


def newer(candidate: Version, than: Version | None) -> bool:
    """Whether `candidate` may replace `than`: later on the same partition, or any version of
    another partition (the one accepted last wins)."""
    if than is None or (candidate[0], candidate[1]) != (than[0], than[1]):
        return True
    return candidate[2] >= than[2]


@dataclass(frozen=True, slots=True)
class CatalogState:
    """One resource: whether Klaviyo has it (True: created or updated, False: deleted, None:
    nothing accepted yet), the version accepted, and the job in progress holding it."""

    exists: bool | None = None
    version: Version | None = None
    job: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogJob:
    """A bulk job sent to Klaviyo and not yet finished: its kind, action and members (resource
    key and version, in the job's order, so a per-resource error's index names one)."""

    id: str
    kind: str
    action: str
    members: tuple[tuple[str, Version], ...]
    started: float

    def encode(self) -> bytes:
        return orjson.dumps(
            {"k": self.kind, "a": self.action, "m": self.members, "s": self.started}
        )

    @staticmethod
    def decode(job_id: str, payload: bytes) -> CatalogJob:
        raw = orjson.loads(payload)
        members = tuple((key, (v[0], int(v[1]), int(v[2]))) for key, v in raw["m"])
        return CatalogJob(job_id, raw["k"], raw["a"], members, float(raw["s"]))


class CatalogStore(Protocol):
    """The catalog's part of the state store; each method is one atomic step."""

    def catalog_states(self, keys: Sequence[str]) -> dict[str, CatalogState]:
        """The states of those `keys` (`item:<id>`…) the store knows."""
        ...

    def catalog_job_started(self, job: CatalogJob) -> None:
        """Remember a job Klaviyo accepted (202) and point each member at it."""
        ...

    def catalog_job_finished(
        self, job_id: str, accepted: Sequence[tuple[str, bool, Version]]
    ) -> None:
        """The job is over: each of `accepted` (key, exists now, version) is what Klaviyo has,
        unless a newer version of it was accepted already; members still pointing at the job
        are released, and the job is forgotten."""
        ...

    def catalog_job(self, job_id: str) -> CatalogJob | None:
        """A job in progress, by id (None once finished)."""
        ...

    def catalog_stats(self) -> dict[str, int]:
        """Sizes for metrics and docs: `catalog_resources`, `catalog_jobs`."""
        ...
