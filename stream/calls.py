"""The one internal type every stage works on: a decoded analytics call and where it came from.

`normalize` turns a decoded Avro record (or a Segment JSON call, for `produce` and the event
tester) into a `Call`. JSON-typed fields (traits, properties, context) are parsed here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream.errors import DecodeError

CallType = Literal["identify", "track", "alias", "page"]
CALL_TYPES: tuple[CallType, ...] = ("identify", "track", "alias", "page")


Headers = list[tuple[str, str | bytes | None]]


@dataclass(slots=True, eq=False)
class Record:
    """One consumed Kafka record, from fetch until the completion ledger finishes it.

    Where it came from (dead letters need it all), its message id once decoded (the dedup key),
    and the ledger's bookkeeping: `generation` is the partition generation it was fetched in
    (None for a held call released from the state store: no Kafka position of its own, and
    `held_id` names its store entry instead); `open` counts what still has to happen to it (the
    processing token, then one per unsettled item); `failed` is set when one of its items was
    dead-lettered; `waiting` holds later copies of its message id that finish with it.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: Headers | None = None
    generation: object | None = None
    message_id: str | None = None
    held_id: str | None = None
    open: int = 1
    failed: bool = False
    delivered: bool = False
    waiting: list[Record] | None = None

    @property
    def position(self) -> str:
        """`topic[partition]@offset`, for logs."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(slots=True)
class Call:
    """A Segment-model call: identify, track, alias or page."""

    type: CallType
    message_id: str
    timestamp: str
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    event: str | None = None
    name: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


def _json_object(raw: Any, key: str) -> dict[str, Any]:
    if raw is None or raw == "" or raw == "{}":  # the common empty cases skip the parser
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"field '{key}' is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError(f"field '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def normalize(call_type: str, record: dict[str, Any]) -> Call:
    """Build a `Call` from an Avro record or a Segment JSON call (camelCase keys)."""
    if call_type not in CALL_TYPES:
        raise DecodeError(f"unknown call type '{call_type}' (expected one of {CALL_TYPES})")
    message_id = record.get("messageId")
    if not message_id or not isinstance(message_id, str):
        raise DecodeError("missing required field 'messageId'")
    timestamp = record.get("timestamp")
    if not timestamp or not isinstance(timestamp, str):
        raise DecodeError("missing required field 'timestamp'")
    get = record.get  # per record on the hot path: positional construction, one lookup each
    call = Call(
        call_type,  # type: ignore[arg-type]
        message_id,
        timestamp,
        get("userId") or None,
        get("anonymousId") or None,
        get("previousId") or None,
        get("event") or None,
        get("name") or None,
        _json_object(get("traits"), "traits"),
        _json_object(get("properties"), "properties"),
        _json_object(get("context"), "context"),
    )
    if call_type == "track" and not call.event:
        raise DecodeError("a track call needs an 'event' name")
    if call_type == "alias" and not (call.previous_id and call.user_id):
        raise DecodeError("an alias call needs 'previousId' and 'userId'")
    return call
