"""Map calls to Klaviyo's current API payloads (JSON:API), as Freshpaint's destination did.

identify → profile: email, phone_number (E.164), external_id (userId or traits.id),
firstName → first_name, lastName → last_name, title, company (its `name` when an object) →
organization, traits.address + context location/timezone/ip → location, and every other trait
as a custom property; per-call `unset`/`append` options → `meta.patch_properties`.
track → event: metric = event name, properties, time, value from revenue/total/value (Segment's
precedence), unique_id = messageId. group → organization. Absent optional fields stay absent:
in an upsert a null would clear the field.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from stream.core.calls import Call
from stream.core.errors import MappingError
from stream.core.identifiers import Identifiers
from stream.core.options import KlaviyoOptions

MAX_METRIC_NAME = 127  # Klaviyo's spec: a metric name "Must be less than 128 characters."
MAX_PROPERTIES = 400
EARLIEST_EVENT = datetime(1991, 1, 1, tzinfo=UTC)  # the spec: "after the year 1990"

# trait key → Klaviyo profile attribute; identifiers are handled by stream.core.identifiers
PROFILE_TRAITS: dict[str, str] = {
    "firstName": "first_name",
    "first_name": "first_name",
    "lastName": "last_name",
    "last_name": "last_name",
    "title": "title",
    "organization": "organization",
    "image": "image",
    "avatar": "image",
    "locale": "locale",
}
IDENTIFIER_TRAITS = frozenset({"email", "phone", "phoneNumber", "id", "anonymousId", "userId"})
VALUE_KEYS = ("revenue", "total", "value")  # Segment's precedence
# traits.address key → Klaviyo location field (Segment's names, then Klaviyo's own)
ADDRESS_FIELDS: dict[str, str] = {
    "street": "address1",
    "street2": "address2",
    "city": "city",
    "state": "region",
    "postalCode": "zip",
    "postal_code": "zip",
    "country": "country",
    "address1": "address1",
    "address2": "address2",
    "region": "region",
    "zip": "zip",
}


_UTC_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|\+00:00)")


def event_time(timestamp: str) -> str:
    """ISO-8601 in UTC, truncated to the second, inside Klaviyo's accepted window."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        raise MappingError(f"timestamp {timestamp!r} is not ISO-8601") from None
    if _UTC_SECONDS.fullmatch(timestamp):  # the usual case: already UTC, so truncate the text
        text = timestamp[:19] + "+00:00"
        earliest, latest = _window()
        if text < earliest:
            raise MappingError(f"timestamp {timestamp!r} is in or before 1990")
        if text > latest:
            raise MappingError(f"timestamp {timestamp!r} is more than a year ahead")
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC).replace(microsecond=0)
    except (OverflowError, ValueError):  # the calendar's edge: year 1 east of UTC, 9999 west
        raise MappingError(f"timestamp {timestamp!r} is outside the calendar in UTC") from None
    if moment < EARLIEST_EVENT:
        raise MappingError(f"timestamp {timestamp!r} is in or before 1990")
    if moment > datetime.fromisoformat(_window()[1]):
        raise MappingError(f"timestamp {timestamp!r} is more than a year ahead")
    return moment.isoformat()


_EARLIEST_TEXT = EARLIEST_EVENT.isoformat()
_latest: tuple[float, str] = (-1e9, _EARLIEST_TEXT)


def _window() -> tuple[str, str]:
    """Klaviyo's accepted event times as UTC text, 1991 to now + 1 year (text of one format
    compares like time). The clock is read at most once a minute: this runs per record."""
    global _latest
    checked, latest = _latest
    now = time.monotonic()
    if now - checked > 60:
        latest = (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0).isoformat()
        _latest = (now, latest)
    return _EARLIEST_TEXT, latest


def profile_attributes(call: Call, ids: Identifiers) -> dict[str, Any]:
    """Attributes of a profile upsert for an identify call (no anonymous_id: not in the schema).

    A property the call's options unset is never also set (Klaviyo would apply both)."""
    attributes: dict[str, Any] = ids.as_attributes(anonymous=False)
    custom: dict[str, Any] = {}
    traits = call.traits
    for key, value in traits.items():
        if key in IDENTIFIER_TRAITS or value is None:
            continue
        target = PROFILE_TRAITS.get(key)
        if target is not None:
            attributes[target] = value if isinstance(value, str) else str(value)
        elif key == "company":
            _company(value, attributes, custom)
        elif key == "address" and isinstance(value, dict):
            rest = _address(value, attributes)
            if rest:
                custom["address"] = rest
        else:
            custom[key] = value
    if isinstance(traits.get("organization"), str):
        attributes["organization"] = traits["organization"]  # an explicit one wins
    location = _context_location(call.context)
    if location:
        attributes["location"] = {**location, **attributes.get("location", {})}
    for key in call.options.unset:
        custom.pop(key, None)
    if custom:
        attributes["properties"] = custom
    return attributes


def _company(value: Any, attributes: dict[str, Any], custom: dict[str, Any]) -> None:
    """Segment's `company` object: its name is the organization, the rest custom properties."""
    if not isinstance(value, dict):
        attributes["organization"] = value if isinstance(value, str) else str(value)
        return
    name = value.get("name")
    if name is not None and name != "":
        attributes["organization"] = name if isinstance(name, str) else str(name)
    rest = {k: v for k, v in value.items() if k != "name" and v is not None}
    if rest:
        custom["company"] = rest


def _address(address: dict[str, Any], attributes: dict[str, Any]) -> dict[str, Any]:
    """traits.address → `location`; returns the keys Klaviyo has no field for."""
    location: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in address.items():
        target = ADDRESS_FIELDS.get(key)
        if value is None or value == "":
            continue
        if target is not None and isinstance(value, str | int | float) and not _flag(value):
            location.setdefault(target, str(value))
        else:
            rest[key] = value
    if location:
        attributes["location"] = location
    return rest


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _coordinate(value: Any) -> float | str | None:
    if isinstance(value, int | float) and not _flag(value):
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _context_location(context: dict[str, Any]) -> dict[str, Any]:
    """Segment's context: `location.latitude`/`longitude`, `timezone`, `ip` (the HIPAA
    filter, which runs before mapping, never lets `ip` through)."""
    out: dict[str, Any] = {}
    place = context.get("location")
    if isinstance(place, dict):
        for key in ("latitude", "longitude"):
            coordinate = _coordinate(place.get(key))
            if coordinate is not None:
                out[key] = coordinate
    for key in ("timezone", "ip"):
        value = context.get(key)
        if isinstance(value, str) and value:
            out[key] = value
    return out


def profile_meta(options: KlaviyoOptions) -> dict[str, Any] | None:
    """`meta` of a profile upsert: the call's `unset` and `append` options as Klaviyo's
    `patch_properties`; None when there is nothing to patch."""
    if not options.patches_profile:
        return None
    patch: dict[str, Any] = {}
    if options.unset:
        patch["unset"] = list(options.unset)
    if options.append:
        patch["append"] = dict(options.append)
    return {"patch_properties": patch}


def group_profile_attributes(call: Call) -> dict[str, Any] | None:
    """What an enabled group call changes on its person's profile: `organization` from the
    group's `name` trait. None when it names none (nothing to send)."""
    name = call.traits.get("name")
    if name is None or name == "" or isinstance(name, dict | list):
        return None
    return {"organization": name if isinstance(name, str) else str(name)}


def profile_resource(
    attributes: dict[str, Any], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`{"type": "profile", "attributes": …}`, with `meta` (patch operations) when given."""
    if meta is None:
        return {"type": "profile", "attributes": attributes}
    return {"type": "profile", "attributes": attributes, "meta": meta}


def event_attributes(
    call: Call, metric_name: str | None = None, properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Attributes of one event (without its profile), shared by single and bulk requests;
    `properties` replace the call's (an ecommerce event's, with Klaviyo's names added)."""
    name = metric_name or call.event or ""
    if not name or len(name) > MAX_METRIC_NAME:
        raise MappingError(f"metric name must be 1..{MAX_METRIC_NAME} characters, got {len(name)}")
    if properties is None:
        properties = call.properties
    if len(properties) > MAX_PROPERTIES:
        raise MappingError(f"event has {len(properties)} properties, Klaviyo allows 400")
    attributes: dict[str, Any] = {
        "properties": properties,
        "time": event_time(call.timestamp),
        "unique_id": call.message_id,
        "metric": _metric(name),
    }
    for key in VALUE_KEYS:
        value = properties.get(key)
        if value is not None and isinstance(value, int | float) and not isinstance(value, bool):
            attributes["value"] = value
            currency = properties.get("currency")
            if isinstance(currency, str) and currency:
                attributes["value_currency"] = currency
            break
    return attributes


@lru_cache(maxsize=4096)
def _metric(name: str) -> dict[str, Any]:
    """The metric object of an event, one shared (never mutated) dict per metric name."""
    return {"data": {"type": "metric", "attributes": {"name": name}}}


BACKFILL_HEADER = "klaviyo-stream.backfill"
# an anonymous person's profile (EXPIRED_ANONYMOUS=send) carries this external_id, so that a
# deletion of the person it turns out to be can find it (Klaviyo looks nothing up by anonymous_id)
ANONYMOUS_EXTERNAL_ID = "anonymous:"


def anonymous_profile(anonymous_id: str) -> dict[str, str]:
    """The profile an expired anonymous call is sent on: findable by its external_id."""
    return {"anonymous_id": anonymous_id, "external_id": ANONYMOUS_EXTERNAL_ID + anonymous_id}


# a delete call that names only an erasure: send it again from the entry kept (`dlq replay`)
ERASURE_HEADER = "klaviyo-stream.erasure"


def wants_backfill(headers: list[tuple[str, str | bytes | None]] | None) -> bool:
    """True when a record carries `klaviyo-stream.backfill: 1` (dead-letter replays set it):
    its event is sent with `backfill: true`, recorded without triggering flows."""
    if not headers:  # the common case, on the per-record path
        return False
    return any(k == BACKFILL_HEADER and v in (b"1", "1") for k, v in headers)


def single_event_body(event: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """Body of `POST /api/events` for one event."""
    return {
        "data": {
            "type": "event",
            "attributes": {**event, "profile": {"data": profile_resource(profile)}},
        }
    }


def bulk_events_body(groups: list[tuple[dict[str, Any], list[Any]]]) -> dict[str, Any]:
    """Body of `POST /api/event-bulk-create-jobs`: events grouped per profile (each event's
    attributes a dict, or already encoded as an `orjson.Fragment`)."""
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {
                "events-bulk-create": {
                    "data": [
                        {
                            "type": "event-bulk-create",
                            "attributes": {
                                "profile": {"data": profile_resource(profile)},
                                "events": {
                                    "data": [{"type": "event", "attributes": e} for e in events]
                                },
                            },
                        }
                        for profile, events in groups
                    ]
                }
            },
        }
    }


def client_bulk_events_body(
    profile: dict[str, Any], events: list[dict[str, Any]]
) -> dict[str, Any]:
    """Body of `POST /client/event-bulk-create`: one profile and its events (client mode)."""
    return {
        "data": {
            "type": "event-bulk-create",
            "attributes": {
                "profile": {"data": profile_resource(profile)},
                "events": {"data": [{"type": "event", "attributes": e} for e in events]},
            },
        }
    }


def profile_import_body(
    attributes: dict[str, Any], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Body of `POST /api/profile-import` (and `/client/profiles`) for one profile."""
    return {"data": profile_resource(attributes, meta)}


def bulk_profiles_body(
    profiles: list[dict[str, Any]], metas: list[dict[str, Any] | None] | None = None
) -> dict[str, Any]:
    """Body of `POST /api/profile-bulk-import-jobs`; `metas[i]` is profile i's `meta`."""
    resources = (
        [profile_resource(p) for p in profiles]
        if metas is None
        else [profile_resource(p, m) for p, m in zip(profiles, metas, strict=True)]
    )
    return {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": resources}},
        }
    }


def merge_body(destination_id: str, source_ids: list[str]) -> dict[str, Any]:
    """Body of `POST /api/profile-merge`: fold the sources into the destination."""
    return {
        "data": {
            "type": "profile-merge",
            "id": destination_id,
            "relationships": {
                "profiles": {"data": [{"type": "profile", "id": s} for s in source_ids]}
            },
        }
    }
