"""The per-record middle of the pipeline: route → identity → map, from a `Call` to batch items.

It holds no I/O: the service feeds it decoded calls and hands the items to the batcher.
A `RecordError` raised here sends the record to the dead-letter topic with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream import metrics
from stream.batch import Item
from stream.calls import Call, Source
from stream.errors import MappingError
from stream.identifiers import identifiers_of
from stream.klaviyo import mapping
from stream.route import Router


@dataclass(frozen=True, slots=True)
class Processor:
    """Turns one call into zero or more items to send."""

    router: Router
    phone_region: str = "US"

    def items(self, call: Call, source: Source) -> list[Item]:
        """The items for one call; [] when routing filters it (counted)."""
        skip = self.router.reason_to_skip(call)
        if skip is not None:
            metrics.RECORDS_FILTERED.labels(call.type, skip).inc()
            return []
        ids = identifiers_of(call, self.phone_region)
        if call.type == "identify":
            attributes = mapping.profile_attributes(call, ids)
            if not ids.named:
                raise MappingError("identify names no email, phone or userId")
            return [Item("profiles", attributes, None, [source])]
        if not (ids.named or ids.anonymous_id):
            raise MappingError(f"{call.type} call names no person (no userId or anonymousId)")
        event = mapping.event_attributes(call, self.router.metric_name(call))
        return [Item("events", ids.as_attributes(anonymous=True), event, [source])]
