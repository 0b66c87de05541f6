"""HIPAA mode: only allow-listed properties and traits leave the service.

Applied right after the user's transformations, before identity and mapping, so whatever is
not allow-listed never reaches Klaviyo, the logs, the metrics or (redacted) dead letters.
The call's context is cut to its allow-listed traits and the allow-listed context keys: IP
addresses, user agents, page URLs and other free text are dropped; a string value that is an
IP address is dropped even under an allowed key. Allow-lists name top-level keys; a nested
object under an allowed key is kept whole.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from stream.core.calls import Call, Record
from stream.core.errors import HipaaConfigError
from stream.rules.configfile import load_document

if TYPE_CHECKING:
    from stream.core.settings import Settings

NEVER_ALLOWED_CONTEXT = frozenset({"ip", "userAgent", "user_agent", "page", "traits"})



def _is_ip(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 45 or not ("." in value or ":" in value):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _keep(source: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(source, dict):
        return {}
    return {k: v for k, v in source.items() if k in allowed and not _is_ip(v)}


@dataclass(frozen=True, slots=True)
class HipaaPolicy:
    """The allow-lists; `apply` returns a call holding nothing else."""

    allowed_properties: frozenset[str] = frozenset()
    allowed_traits: frozenset[str] = frozenset()
    allowed_context: frozenset[str] = frozenset()

    def apply(self, call: Call) -> Call:
        """A copy of `call` with only allow-listed properties, traits and context keys."""
        context = _keep(call.context, self.allowed_context)
        if call.type != "identify":
            traits = _keep(call.context.get("traits"), self.allowed_traits)
            if traits:
                context["traits"] = traits
        return dataclasses.replace(
            call,
            traits=_keep(call.traits, self.allowed_traits),
            properties=_keep(call.properties, self.allowed_properties),
            context=context,
        )


REDACTED_HEADER = "klaviyo-stream.redacted"
REDACTED = b"hipaa"


def redacted_copy(record: Record, call: Call) -> Record:
    """What a held call keeps of its record in HIPAA mode: the filtered call as its value, no
    key, no headers but the mark — never the original record, whose PHI would sit in the state
    store for as long as the call waits."""
    return Record(
        record.topic, record.partition, record.offset, None, redacted_record(call),
        [(REDACTED_HEADER, REDACTED)], message_id=record.message_id,
    )


def redacted_record(call: Call) -> bytes:
    """A dead letter's value in HIPAA mode: the already filtered call as Segment JSON."""
    document = {
        "type": call.type,
        "messageId": call.message_id,
        "timestamp": call.timestamp,
        "userId": call.user_id,
        "anonymousId": call.anonymous_id,
        "previousId": call.previous_id,
        "event": call.event,
        "traits": call.traits,
        "properties": call.properties,
        "context": call.context,
    }
    return orjson.dumps({k: v for k, v in document.items() if v not in (None, {})})


def dead_letter_redactor(
    decode: Callable[[bytes], Call], shape: Callable[[Call], Call]
) -> Callable[[Record], bytes | None]:
    """For the dead-letter writer: original bytes → the filtered call, or None if unreadable."""

    def redact(record: Record) -> bytes | None:
        if not record.value:
            return None
        if record.headers and (REDACTED_HEADER, REDACTED) in record.headers:
            return record.value  # filtered already (a held call stored that way)
        try:
            return redacted_record(shape(decode(record.value)))
        except Exception:  # undecodable, or a record built to hurt: show nothing of it
            return None

    return redact


def _names(document: dict[str, Any], key: str, path: str) -> frozenset[str]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise HipaaConfigError(f"{path}: field '{key}': must be a list of key names")
    return frozenset(value)


def load_policy(path: str | None) -> HipaaPolicy:
    """Read the allow-list file (YAML or JSON); no file allows nothing but identifiers."""
    if path is None:
        return HipaaPolicy()
    document = load_document(path, HipaaConfigError)
    fields = ("allowed_properties", "allowed_traits", "allowed_context")
    unknown = set(document) - set(fields)
    if unknown:
        raise HipaaConfigError(f"{path}: unknown field(s) {sorted(unknown)}")
    policy = HipaaPolicy(*(_names(document, f, path) for f in fields))
    forbidden = sorted(policy.allowed_context & NEVER_ALLOWED_CONTEXT)
    if forbidden:
        raise HipaaConfigError(
            f"{path}: field 'allowed_context': {forbidden} can never leave in HIPAA mode "
            "(context traits are governed by allowed_traits)"
        )
    return policy


def policy_from_settings(settings: Settings) -> HipaaPolicy | None:
    """The policy when `HIPAA_MODE` is on, else None."""
    if not settings.hipaa_mode:
        return None
    return load_policy(settings.hipaa_config_file)
