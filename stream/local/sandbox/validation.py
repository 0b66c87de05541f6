"""Request checks: the OpenAPI schema first, then the limits Klaviyo enforces beyond it.

Every failure becomes an `ErrorItem` whose `source.pointer` is the RFC 6901 pointer of the
offending field, so a client can tell which bulk entry is bad. Bulk requests report one
error per bad entry; single requests report the first problem found.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import phonenumbers
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

from .errors import ErrorItem, pointer_of

MAX_STRING_BYTES = 100 * 1024
MAX_EVENT_PROPERTIES = 400
MAX_METRIC_NAME = 127  # the spec: "Must be less than 128 characters."
MAX_EXTERNAL_ID = 255
MAX_BULK_EVENTS = 1_000
MAX_BULK_PROFILES = 10_000
EARLIEST_EVENT_TIME = datetime(1991, 1, 1, tzinfo=UTC)
"""The spec: "The time must be after the year 1990": the first instant after that year."""

_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
Path = tuple[str | int, ...]
_LONG_CHARS = MAX_STRING_BYTES // 4  # fewer characters cannot take 100 KB of UTF-8
_NAME: Path = ("metric", "data", "attributes", "name")
_TIME_WINDOW = "Event time must be after the year 1990 and at most 1 year in the future."


def _invalid(path: Path, detail: str) -> ErrorItem:
    return ErrorItem(400, "invalid", detail, pointer=pointer_of(path))


def _describe(error: ValidationError) -> tuple[Path, str]:
    """Where a schema error points and a Klaviyo-like sentence about it."""
    path: Path = tuple(error.absolute_path)
    instance = error.instance
    resource = instance.get("type") if isinstance(instance, dict) else None
    noun = f"the resource '{resource}'" if isinstance(resource, str) else "this object"
    if error.validator == "required" and isinstance(instance, dict):
        missing = next((k for k in error.validator_value if k not in instance), "?")
        return (*path, missing), f"'{missing}' is a required field for {noun}."
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {})
        extra = next((k for k in instance if k not in known), "?")
        return (*path, extra), f"'{extra}' is not a valid field for {noun}."
    if error.validator == "enum":
        return path, f"{instance!r} is not a valid choice; expected one of {error.validator_value}."
    return path, f"Invalid input: {error.message}"


def schema_errors(validator: Draft202012Validator, body: Any, group_depth: int) -> list[ErrorItem]:
    """Schema violations, at most one per distinct path prefix of `group_depth` parts.

    `group_depth` is how deep bulk entries sit (e.g. 5 for `/data/attributes/profiles/data/<i>`)
    so one bad entry yields one error; 0 means a single error for the whole request.
    """
    found: dict[Path, ErrorItem] = {}
    for error in validator.iter_errors(body):
        chosen = best_match([error]) or error
        path, detail = _describe(chosen)
        group = path[:group_depth] if group_depth else ()
        if group not in found:
            found[group] = _invalid(path, detail)
    return [found[k] for k in sorted(found, key=lambda p: [str(x).zfill(12) for x in p])]


def strings_fit(raw: bytes) -> bool:
    """True if the raw JSON `raw` proves that no string in it can be longer than 100 KB.

    A decoded string of n characters spans at least n bytes of raw JSON between its quotes,
    and `long_strings` only looks closer at strings of more than 25,600 characters. Once every
    escaped backslash and quote is blanked out, such a span covers a whole aligned block of
    12,800 bytes without a `"`; so if every block holds a quote, there is no such string. A
    few `find` calls instead of a walk over every node; False only means "walk to find out".
    """
    if len(raw) <= _LONG_CHARS:
        return True
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    block = _LONG_CHARS // 2
    starts = range(0, len(raw) - block + 1, block)
    return all(raw.find(b'"', start, start + block) >= 0 for start in starts)


def long_strings(node: Any, path: Path = ()) -> Iterator[Path]:
    """Paths of every string value longer than 100 KB (UTF-8)."""
    if isinstance(node, str):
        if len(node) > _LONG_CHARS and len(node.encode()) > MAX_STRING_BYTES:
            yield path
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from long_strings(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from long_strings(value, (*path, index))


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime (naive means UTC), or None if unreadable."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def normalize_email(email: str) -> str:
    """Klaviyo's storage form of an email: trimmed and lower-cased."""
    return email.strip().lower()


@lru_cache(maxsize=65_536)
def valid_email(email: str) -> bool:
    """Syntax check close to what Klaviyo accepts (local@domain.tld, no spaces)."""
    return len(email) <= 254 and _EMAIL.match(email.strip()) is not None


@lru_cache(maxsize=65_536)
def valid_e164(phone: str) -> bool:
    """True if `phone` is a valid number already written in E.164 (+<country><number>)."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return False
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return phonenumbers.is_valid_number(number) and e164 == phone


def check_profile(
    data: dict[str, Any], path: Path, *, anonymous_ok: bool, need_identifier: bool = True
) -> ErrorItem | None:
    """Identifier checks on a profile resource object (`{"type","id","attributes"}`)."""
    attrs = data.get("attributes") or {}
    apath = (*path, "attributes")
    email = attrs.get("email")
    if isinstance(email, str) and not valid_email(email):
        return _invalid((*apath, "email"), f"Invalid email address: {email!r}.")
    phone = attrs.get("phone_number")
    if isinstance(phone, str) and not valid_e164(phone):
        return _invalid(
            (*apath, "phone_number"),
            "Invalid phone number format (Example of a valid format: +13239169023).",
        )
    external_id = attrs.get("external_id")
    if isinstance(external_id, str) and len(external_id) > MAX_EXTERNAL_ID:
        return _invalid((*apath, "external_id"), "external_id must be at most 255 characters.")
    named = email or phone or external_id or (anonymous_ok and attrs.get("anonymous_id"))
    if need_identifier and not (data.get("id") or named):
        names = "id, email, phone_number, external_id" + (", anonymous_id" if anonymous_ok else "")
        return _invalid(apath, f"A profile requires at least one identifier: one of {names}.")
    return None


def check_event(attrs: dict[str, Any], path: Path, now: datetime) -> ErrorItem | None:
    """Metric name, property count and time window of an event's attributes."""
    problem = _event_problem(attrs, now + timedelta(days=365))
    return None if problem is None else _invalid((*path, *problem[0]), problem[1])


def _event_problem(attrs: dict[str, Any], latest: datetime) -> tuple[Path, str] | None:
    """`check_event` without building paths: (path below `attrs`, detail) of the first problem."""
    name = attrs["metric"]["data"]["attributes"]["name"]
    if not name.strip():
        return _NAME, "Metric name must not be blank."
    if len(name) > MAX_METRIC_NAME:
        return _NAME, "Metric name must be less than 128 characters."
    if len(attrs["properties"]) > MAX_EVENT_PROPERTIES:
        return ("properties",), "An event may have at most 400 properties."
    when = attrs.get("time")
    if isinstance(when, str):
        parsed = parse_time(when)
        if parsed is None:
            return ("time",), f"{when!r} is not a valid ISO 8601 date-time."
        if parsed < EARLIEST_EVENT_TIME or parsed > latest:
            return ("time",), _TIME_WINDOW
    return None


def _first(*items: ErrorItem | None) -> ErrorItem | None:
    return next((item for item in items if item is not None), None)


def check_single_event(body: dict[str, Any], now: datetime) -> list[ErrorItem]:
    """create_event / create_client_event: event limits plus its profile's identifiers."""
    attrs = body["data"]["attributes"]
    base: Path = ("data", "attributes")
    found = _first(
        check_event(attrs, base, now),
        check_profile(attrs["profile"]["data"], (*base, "profile", "data"), anonymous_ok=True),
    )
    return [found] if found else []


def check_bulk_events(entries: list[tuple[Path, dict[str, Any]]], now: datetime) -> list[ErrorItem]:
    """Bulk event entries, each with its own path: event count limit, then one error per entry."""
    total = sum(len(entry["attributes"]["events"]["data"]) for _, entry in entries)
    if total > MAX_BULK_EVENTS:
        root = entries[0][0][:-1] if len(entries) > 1 else entries[0][0]
        return [_invalid(root, f"At most {MAX_BULK_EVENTS} events per request; got {total}.")]
    latest = now + timedelta(days=365)
    errors: list[ErrorItem] = []
    for path, entry in entries:
        epath = (*path, "attributes")
        found = check_profile(
            entry["attributes"]["profile"]["data"], (*epath, "profile", "data"), anonymous_ok=True
        )
        events = enumerate(entry["attributes"]["events"]["data"])  # raises as before if it must
        if found is None:
            for j, event in events:
                problem = _event_problem(event["attributes"], latest)
                if problem is not None:
                    where = (*epath, "events", "data", j, "attributes", *problem[0])
                    found = _invalid(where, problem[1])
                    break
        if found:
            errors.append(found)
    return errors


def check_profiles(entries: list[tuple[Path, dict[str, Any]]]) -> list[ErrorItem]:
    """Profile upsert entries, each with its own path: identifier checks, one error per entry."""
    errors = []
    for path, entry in entries:
        found = check_profile(entry, path, anonymous_ok=False)
        if found:
            errors.append(found)
    return errors
