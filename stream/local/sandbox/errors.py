"""JSON:API error bodies the way Klaviyo writes them, and the exception that carries them.

Handlers raise `ApiError`; the app turns it into a response. Nothing here ever includes a
request header, so an API key cannot leak into a body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

TITLES = {
    "invalid": "Invalid input.",
    "not_authenticated": "Authentication credentials were not provided.",
    "throttled": "Request was throttled.",
    "not_found": "Not found.",
    "duplicate_profile": "Conflict.",
    "parse_error": "Malformed request.",
    "request_too_large": "Request entity too large.",
    "method_not_allowed": "Method not allowed.",
    "error": "A server error occurred.",
    "service_unavailable": "Service unavailable.",
}


@dataclass
class ErrorItem:
    """One entry of a JSON:API `errors` array."""

    status: int
    code: str
    detail: str
    pointer: str | None = None
    parameter: str | None = None
    meta: dict[str, Any] | None = None
    title: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form: id, status, code, title, detail, source (and meta when set)."""
        source: dict[str, str] = {}
        if self.pointer is not None:
            source["pointer"] = self.pointer
        if self.parameter is not None:
            source["parameter"] = self.parameter
        if not source:
            source["pointer"] = "/data/"
        out: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": self.code,
            "title": self.title or TITLES.get(self.code, "Error."),
            "detail": self.detail,
            "source": source,
        }
        if self.meta is not None:
            out["meta"] = self.meta
        return out


@dataclass
class ApiError(Exception):
    """An HTTP error answer: status, the error items, and extra headers (e.g. Retry-After)."""

    status: int
    items: list[ErrorItem]
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(item.detail for item in self.items)

    def body(self) -> dict[str, Any]:
        """The JSON:API document `{"errors": [...]}`."""
        return {"errors": [item.to_json() for item in self.items]}


def invalid(detail: str, pointer: str | None = None, parameter: str | None = None) -> ApiError:
    """A single 400 `invalid` error."""
    return ApiError(400, [ErrorItem(400, "invalid", detail, pointer, parameter)])


def pointer_of(parts: list[str | int] | tuple[str | int, ...]) -> str:
    """RFC 6901 JSON pointer for a path of keys and indexes."""
    escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in parts)
    return "".join("/" + p for p in escaped)
