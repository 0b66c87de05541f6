"""The one internal type every stage works on: a decoded analytics call and where it came from.

`normalize` turns a decoded Avro record (or a Segment JSON call, for `produce` and the event
tester) into a `Call`. JSON-typed fields (traits, properties, context, integrations) are parsed
here, once: a missing or `null` one is an empty object (some libraries write `null`). Identify
traits are read from `traits` and from `context.traits` (RudderStack's SDK writes them only
there); the top-level value wins per key. `integrations` becomes `for_klaviyo` and `options`.
A `delete` call (an erasure request) reads its identifying traits the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream.core.errors import DecodeError
from stream.core.options import NO_OPTIONS, KlaviyoOptions, read_integrations

CallType = Literal["identify", "track", "alias", "page", "screen", "group", "delete"]
CALL_TYPES: tuple[CallType, ...] = (
    "identify", "track", "alias", "page", "screen", "group", "delete"
)  # fmt: skip


Headers = list[tuple[str, str | bytes | None]]


@dataclass(slots=True, eq=False)
class Record:
    """One consumed Kafka record, from fetch until the completion ledger finishes it.

    Where it came from (dead letters need it all), its message id once decoded (the dedup key),
    and the ledger's bookkeeping: `generation` is the partition generation it was fetched in
    (None for a held call released from the state store: no Kafka position of its own, and
    `held_id` names its store entry instead); `open` counts what still has to happen to it (the
    processing token, then one per unsettled item); `failed` is set when one of its items was
    dead-lettered or cancelled (its message id is then never remembered as delivered);
    `waiting` holds later copies of its message id that finish with it. `stamp` is the
    tombstone mark it was judged against when processed (or adopted: a released held call),
    `called_at` its call's time for ordering (`stream.identity.erasure`); `again` the mark
    at which it was last sent to be processed anew (it raced a deletion): what it made before
    is void.

    With an accounts file (`stream.accounts`), `account` names the account it goes to (None:
    not routed yet, or the single account of a deployment without one). A record going to
    several accounts is finished by one copy per account (`Ledger.fan_out`): each copy's
    `parent` is the Kafka record, which finishes when every copy has; `redact_as` names the
    account whose HIPAA redaction its dead letter takes (a fan-out spanning HIPAA accounts).
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
    stamp: int = 0
    called_at: float = 0.0
    again: int = 0
    account: str | None = None
    parent: Record | None = None
    redact_as: str | None = None

    @property
    def position(self) -> str:
        """`topic[partition]@offset`, for logs."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(slots=True)
class Call:
    """A Segment-model call: identify, track, alias, page, screen or group."""

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
    group_id: str | None = None  # group calls
    for_klaviyo: bool = True  # False: `integrations` turned this destination off
    options: KlaviyoOptions = NO_OPTIONS  # `integrations.Klaviyo` as an object


def _json_object(raw: Any, key: str) -> dict[str, Any]:
    if raw is None or raw == "{}" or raw == "" or raw == "{ }" or raw == "null":  # empty: common
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"field '{key}' is not valid JSON: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(f"field '{key}' must be a JSON object, got {type(value).__name__}")
    return value


_INTEGRATIONS: dict[str, tuple[bool, KlaviyoOptions]] = {}  # the few spellings producers use


def _integrations(raw: Any) -> tuple[bool, KlaviyoOptions]:
    """`integrations` → (for Klaviyo, options); memoized per text (options are immutable)."""
    if raw is None or raw == "" or raw == "{}" or raw == "{ }":
        return True, NO_OPTIONS
    known = _INTEGRATIONS.get(raw) if isinstance(raw, str) else None
    if known is not None:
        return known
    result = read_integrations(_json_object(raw, "integrations"))
    if isinstance(raw, str) and len(_INTEGRATIONS) < 1024:
        _INTEGRATIONS[raw] = result
    return result


def _identify_traits(traits: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """An identify call's traits: `context.traits` under the top-level `traits`."""
    nested = context.get("traits")
    if not nested or not isinstance(nested, dict):
        return traits
    return {**nested, **traits}


def routing_call(call_type: str, name: str | None, integrations: str | None) -> Call | None:
    """A `Call` with only what routing reads (type, event or page/screen name, integrations;
    the rest empty), for a record read only that far (`Decoder.peek`); None when its
    integrations are malformed (decoded in full, its dead letter says why)."""
    if integrations is None or integrations == "{}":
        for_klaviyo, options = True, NO_OPTIONS
    else:
        try:
            for_klaviyo, options = _integrations(integrations)
        except DecodeError:
            return None
    event = name if call_type == "track" else None
    return Call(
        call_type,  # type: ignore[arg-type]
        "",
        "",
        event=event or None,
        name=None if call_type == "track" else name or None,
        for_klaviyo=for_klaviyo,
        options=options,
    )


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
    integrations = get("integrations")
    if integrations is None or integrations == "{}":  # the usual case skips a call
        for_klaviyo, options = True, NO_OPTIONS
    else:
        for_klaviyo, options = _integrations(integrations)
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
        get("groupId") or None,
        for_klaviyo,
        options,
    )
    if (call_type == "identify" or call_type == "delete") and "traits" in call.context:
        call.traits = _identify_traits(call.traits, call.context)
    if call_type == "track" and not call.event:
        raise DecodeError("a track call needs an 'event' name")
    if call_type == "alias" and not (call.previous_id and call.user_id):
        raise DecodeError("an alias call needs 'previousId' and 'userId'")
    if call_type == "group" and not call.group_id:
        raise DecodeError("a group call needs a 'groupId'")
    if call_type == "delete" and not (call.user_id or call.anonymous_id or call.traits):
        raise DecodeError("a delete call needs a userId, an anonymousId or traits to name someone")
    return call
