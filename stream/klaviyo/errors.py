"""Klaviyo's JSON:API error answers as typed exceptions.

    KlaviyoError (stream.errors.StreamError)
    ├── KlaviyoUnavailable     timeout or connection error              retriable
    ├── KlaviyoServerError     5xx                                      retriable
    ├── RateLimited            429, carries retry_after seconds         retriable
    └── KlaviyoClientError     4xx: the request itself is wrong         not retriable
        ├── Unauthorized       401/403: the API key                     fatal for the service
        ├── DuplicateProfile   409: carries duplicate_profile_id        healed by a merge
        ├── InvalidRequest     400: carries the JSON pointers of the bad fields
        └── ImportRecordFailed one profile of a bulk import job failed (its import-errors)

Messages carry Klaviyo's code, title and detail, never the request headers (the API key).
"""

from __future__ import annotations

from typing import Any

from stream.errors import StreamError


class KlaviyoError(StreamError):
    """Klaviyo did not accept a request (after `attempts` tries, the first at `first_attempt`)."""

    attempts: int = 1
    first_attempt: float | None = None

    def __init__(self, message: str, status: int = 0, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.errors = errors or []

    @property
    def code(self) -> str | None:
        """Klaviyo's error code of the first error (`invalid`, `duplicate_profile`, …)."""
        return self.errors[0].get("code") if self.errors else None

    @property
    def pointers(self) -> list[str]:
        """JSON pointers (`/data/attributes/...`) of the fields Klaviyo refused."""
        return [
            e["source"]["pointer"]
            for e in self.errors
            if isinstance(e.get("source"), dict) and e["source"].get("pointer")
        ]


class KlaviyoUnavailable(KlaviyoError):
    """No answer: timeout, refused or dropped connection."""

    retriable = True


class KlaviyoServerError(KlaviyoError):
    """Klaviyo answered 5xx."""

    retriable = True


class RateLimited(KlaviyoError):
    """429: wait `retry_after` seconds before the next request to that endpoint."""

    retriable = True

    def __init__(
        self, message: str, retry_after: float, errors: list[dict[str, Any]] | None = None
    ):
        super().__init__(message, 429, errors)
        self.retry_after = retry_after


class KlaviyoClientError(KlaviyoError):
    """4xx: sending the same request again cannot succeed."""


class Unauthorized(KlaviyoClientError):
    """401/403: the API key is missing, wrong or lacks a scope."""


class InvalidRequest(KlaviyoClientError):
    """400: a field is invalid; `pointers` says which."""


class DuplicateProfile(KlaviyoClientError):
    """409: the identifiers sent belong to another profile, `duplicate_profile_id`."""

    @property
    def duplicate_profile_id(self) -> str | None:
        meta = self.errors[0].get("meta") if self.errors else None
        return meta.get("duplicate_profile_id") if isinstance(meta, dict) else None


class ImportRecordFailed(KlaviyoClientError):
    """A bulk import job accepted the request but failed this profile (`/import-errors`)."""


def error_for(status: int, body: Any, retry_after: str | None) -> KlaviyoError:
    """Turn a non-2xx answer into the matching exception."""
    errors = body.get("errors") if isinstance(body, dict) else None
    errors = errors if isinstance(errors, list) else []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    detail = first.get("detail") or first.get("title") or ""
    message = f"Klaviyo {status} {first.get('code', '')}: {detail}".strip()
    if status == 429:
        try:
            wait = max(float(retry_after or 1), 0.0)
        except ValueError:
            wait = 1.0
        return RateLimited(message, wait, errors)
    if status >= 500:
        return KlaviyoServerError(message, status, errors)
    cls: type[KlaviyoClientError] = {
        400: InvalidRequest,
        401: Unauthorized,
        403: Unauthorized,
        409: DuplicateProfile,
    }.get(status, KlaviyoClientError)
    return cls(message, status, errors)
