"""What the catalog stage holds per resource: the version on its way (`Entry`, the ledger's
item), what is known of the resource (`Slot`), and the jobs entries are grouped into."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from stream.catalog.records import Resource
from stream.core.calls import Record
from stream.core.errors import KlaviyoError
from stream.klaviyo.catalog import MAX_JOB_BYTES, MAX_PER_JOB, Action, Kind, entry
from stream.state.catalog import CatalogState, Version

_ENVELOPE = len(orjson.dumps({"data": {"type": "catalog-variant-bulk-update-job",
                                       "attributes": {"variants": {"data": []}}}}))  # fmt: skip


@dataclass(slots=True, eq=False)
class Entry:
    """One version of one resource on its way to Klaviyo: the ledger's item."""

    resource: Resource
    version: Version
    records: list[Record]
    since: float  # monotonic time it began waiting
    attempts: int = 0
    action: Action | None = None
    encoded: bytes = b""
    error: KlaviyoError | None = None  # the last refusal, for the dead letter

    @property
    def label(self) -> str:
        return f"catalog {self.resource.kind} {self.resource.id}"


@dataclass(slots=True)
class Slot:
    """What the stage knows of one resource: Klaviyo's accepted state (from the store), the
    version waiting, the version in a job of ours, a stored job of someone else's."""

    state: CatalogState
    waiting: Entry | None = None
    sent: Entry | None = None
    adopted: str | None = None

    @property
    def busy(self) -> bool:
        return self.sent is not None or self.adopted is not None


@dataclass(slots=True)
class Job:
    kind: Kind
    action: Action
    entries: list[Entry] = field(default_factory=list)
    size: int = 0


class Finished:
    """A record that ends in the stage without a job (already applied, or superseded on
    arrival), handed to the ledger like an item."""

    __slots__ = ("records",)
    label = None

    def __init__(self, records: list[Record]) -> None:
        self.records = records


def applied(version: Version, accepted: Version | None) -> bool:
    """Whether Klaviyo has `version` already (or a newer one of its partition)."""
    return (
        accepted is not None
        and (version[0], version[1]) == (accepted[0], accepted[1])
        and version[2] <= accepted[2]
    )


def chunks(kind: Kind, action: Action, group: list[Entry]) -> list[Job]:
    """`group` as jobs of at most 100 entries and 5 MB; each entry is encoded once (again only
    when its action changed)."""
    out = [Job(kind, action)]
    for current in group:
        if current.action != action or not current.encoded:
            current.action = action
            resource = current.resource
            current.encoded = orjson.dumps(
                entry(kind, action, resource.id, resource.fields, resource.item_id,
                      resource.categories)  # fmt: skip
            )
        cost = len(current.encoded) + 1
        job = out[-1]
        if len(job.entries) >= MAX_PER_JOB or job.size + cost + _ENVELOPE > MAX_JOB_BYTES:
            job = Job(kind, action)
            out.append(job)
        job.entries.append(current)
        job.size += cost
    return out
