"""A thin aiohttp client for the Klaviyo endpoints we call: one request, one typed answer.

It pins the `revision` header, authenticates with `Klaviyo-API-Key`, serializes with orjson, and
turns every non-2xx answer into a `KlaviyoError`. Retrying and pacing are the deliver stage's
job, not this module's. One `aiohttp.ClientSession` with a bounded pool is shared by all calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import orjson
from pydantic import SecretStr

from stream.core.errors import (
    DuplicateProfile,
    InvalidRequest,
    KlaviyoClientError,
    KlaviyoError,
    KlaviyoServerError,
    KlaviyoUnavailable,
    RateLimited,
    Unauthorized,
)

JSON_API = "application/vnd.api+json"

EVENTS = "/api/events"
EVENTS_BULK = "/api/event-bulk-create-jobs"
PROFILE_IMPORT = "/api/profile-import"
PROFILES_BULK = "/api/profile-bulk-import-jobs"
PROFILE_MERGE = "/api/profile-merge"
PROFILES = "/api/profiles"  # GET, with a filter: the merge path's lookup
# GETs of one import job, by the path pattern the governor budgets them under
PROFILES_BULK_JOB = "/api/profile-bulk-import-jobs/{job_id}"
PROFILES_BULK_ERRORS = "/api/profile-bulk-import-jobs/{id}/import-errors"
# client-side mode: public key as `company_id`, no Authorization header
CLIENT_EVENTS = "/client/events"
CLIENT_EVENTS_BULK = "/client/event-bulk-create"
CLIENT_PROFILES = "/client/profiles"


class Requester(Protocol):
    """A paced, retried request (the deliver stage's `Deliverer.request`, or a batch's
    `BatchRequests.request`): `budget` names the rate-limit budget it counts against (an
    endpoint, or a path pattern for a GET by id)."""

    async def __call__(
        self, method: str, path: str, body: Any = None, *, budget: str
    ) -> Response: ...


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer: status, the rate-limit headers, and the parsed body (or None)."""

    status: int
    headers: dict[str, str]
    body: Any


class KlaviyoClient:
    """Posts JSON:API bodies to Klaviyo; raises typed errors; never logs or shows the key."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        revision: str,
        *,
        timeout: float = 30.0,
        max_connections: int = 16,
        public_key: str | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {
            "revision": revision,
            "Accept": JSON_API,
            "Content-Type": JSON_API,
        }
        if public_key is None and api_key is not None:  # client mode never sends a private key
            self._headers["Authorization"] = f"Klaviyo-API-Key {api_key.get_secret_value()}"
        self._client_params = {"company_id": public_key} if public_key is not None else None
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KlaviyoClient:
        # TLS verification stays on: aiohttp verifies certificates by default (ssl=True).
        connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send one request; 2xx → `Response`, anything else → a `KlaviyoError` subclass."""
        if self._session is None:
            raise RuntimeError("KlaviyoClient used outside `async with`")
        data = orjson.dumps(body) if body is not None else None
        params = self._client_params if path.startswith("/client/") else None
        try:
            async with self._session.request(
                method, self._base_url + path, data=data, headers=self._headers, params=params
            ) as resp:
                raw = await resp.read()
                parsed = _parse(raw)
                if resp.status >= 300:
                    raise error_for(resp.status, parsed, resp.headers.get("Retry-After"))
                return Response(resp.status, dict(resp.headers), parsed)
        except KlaviyoError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise KlaviyoUnavailable(f"{method} {path}: {type(exc).__name__}") from None

    async def post(self, path: str, body: Any) -> Response:
        """POST a JSON:API body."""
        return await self.request("POST", path, body)

    async def get(self, path: str) -> Response:
        """GET a resource."""
        return await self.request("GET", path)


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


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
