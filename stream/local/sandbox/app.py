"""The sandbox web application: routes, the per-operation guard, and the observing middleware.

Order of checks for an API request, as Klaviyo applies them: fault injection (the sandbox's
own), authentication (401; 403 for a scope the key lacks), rate limit (429), `revision` header
(400), body size (413), JSON parse (400), OpenAPI schema (400), then the endpoint's own rules.
Every answer of an API endpoint carries RateLimit-Limit/Remaining/Reset; no answer or log
entry ever contains the Authorization header.

Several accounts are served at once (`SandboxConfig.accounts`), told apart by the request's
key: private key, or `company_id` for /client/ endpoints. Each request is answered by its
account's `Sandbox` (its data, limits, faults, stats and log); a request with an unknown key
by the default account's (it gets its 401 there). The /sandbox/ pages take `?account=NAME`
(default: the default account); `POST /sandbox/reset` without it resets every account.
"""

from __future__ import annotations

import hmac
import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from . import api, catalog_api, consent_api, list_api, privacy_api, profile_api, stock_api
from .api import SCHEMA_ERRORS, STRINGS_FIT, Handler, json_response
from .config import SandboxConfig
from .errors import ApiError, ErrorItem, invalid
from .inspection_accounts import account_routes
from .spec import Operation
from .state import Sandbox, SandboxAccounts
from .validation import schema_errors, strings_fit

log = logging.getLogger("stream.local.sandbox")

SANDBOX = web.AppKey("sandbox", Sandbox)  # the default account
ACCOUNTS = web.AppKey("sandbox_accounts", SandboxAccounts)
ANSWERED_BY = web.RequestKey("sandbox_account", Sandbox)
BODY = web.RequestKey("sandbox_body", object)
OPERATION = web.RequestKey("sandbox_operation", str)
FAULT = web.RequestKey("sandbox_fault", str)

MAX_BODY = 5 * 1024 * 1024
_REVISION = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(\.[A-Za-z0-9_-]+)?$")

HANDLERS: dict[str, tuple[Handler, int]] = {
    # operationId: (handler, depth of one bulk entry in the body; 0 = report a single error)
    "create_event": (api.create_event, 0),
    "create_client_event": (api.create_event, 0),
    "bulk_create_events": (api.bulk_create_events, 5),
    "bulk_create_client_events": (api.bulk_create_client_events, 0),
    "create_client_profile": (api.create_client_profile, 0),
    "create_or_update_profile": (profile_api.create_or_update_profile, 0),
    "bulk_import_profiles": (profile_api.bulk_import_profiles, 5),
    "get_bulk_import_profiles_job": (profile_api.get_bulk_import_profiles_job, 0),
    "get_errors_for_bulk_import_profiles_job": (
        profile_api.get_errors_for_bulk_import_profiles_job,
        0,
    ),
    "merge_profiles": (profile_api.merge_profiles, 0),
    "get_profiles": (profile_api.get_profiles, 0),
    "bulk_subscribe_profiles": (consent_api.bulk_subscribe_profiles, 5),
    "bulk_unsubscribe_profiles": (consent_api.bulk_unsubscribe_profiles, 5),
    "bulk_suppress_profiles": (consent_api.bulk_suppress_profiles, 5),
    "bulk_unsuppress_profiles": (consent_api.bulk_unsuppress_profiles, 5),
    "create_client_subscription": (consent_api.create_client_subscription, 0),
    "create_list": (list_api.create_list, 0),
    "get_lists": (list_api.get_lists, 0),
    "add_profiles_to_list": (list_api.add_profiles_to_list, 2),
    "remove_profiles_from_list": (list_api.remove_profiles_from_list, 2),
    "request_profile_deletion": (privacy_api.request_profile_deletion, 0),
    # catalog: bulk jobs, their status, read-back; back in stock; (mapped) metrics
    **catalog_api.handlers(),
    "create_back_in_stock_subscription": (stock_api.create_back_in_stock_subscription, 0),
    "create_client_back_in_stock_subscription": (stock_api.create_back_in_stock_subscription, 0),
    "get_metrics": (stock_api.get_metrics, 0),
    "get_mapped_metrics": (stock_api.get_mapped_metrics, 0),
    "update_mapped_metric": (stock_api.update_mapped_metric, 0),
}


def error_response(exc: ApiError) -> web.Response:
    """The JSON:API error document for `exc`, with its extra headers."""
    response = json_response(exc.body(), exc.status)
    response.headers.update(exc.headers)
    return response


def _account_of(request: web.Request, accounts: SandboxAccounts, op: Operation) -> Sandbox:
    """The account the request's key names (the default one for an unknown or no key)."""
    if op.client:
        found = accounts.by_public_key(request.query.get("company_id", ""))
    else:
        _scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
        found = accounts.by_private_key(key.strip())
    return found or accounts.default


def _authenticate(request: web.Request, sandbox: Sandbox, op: Operation) -> None:
    """Private key for /api/, a known public key (company_id) for /client/; the account's key
    not revoked; a private key with the operation's scopes."""
    account = sandbox.account
    if op.client:
        company = request.query.get("company_id")
        if not company:
            raise invalid("The company_id query parameter is required.", parameter="company_id")
        if company not in account.public_keys or sandbox.revoked:
            raise invalid("Invalid company_id.", parameter="company_id")
        return
    scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
    known = any(hmac.compare_digest(key.strip(), k) for k in account.api_keys)
    if scheme != "Klaviyo-API-Key" or not known or sandbox.revoked:
        detail = "Missing or invalid private key."
        raise ApiError(401, [ErrorItem(401, "not_authenticated", detail)])
    missing = [scope for scope in op.scopes if not _granted(scope, account.scopes)]
    if missing:
        detail = f"Your API key is missing required scopes: {', '.join(missing)}"
        title = "You do not have permission to perform this action."
        raise ApiError(403, [ErrorItem(403, "permission_denied", detail, title=title)])


def _granted(scope: str, scopes: tuple[str, ...] | None) -> bool:
    """A full-access key (None) has every scope; `x:write` grants `x:read` too."""
    if scopes is None or scope in scopes:
        return True
    kind, _, level = scope.partition(":")
    return level == "read" and f"{kind}:write" in scopes


def _check_revision(request: web.Request, revisions: tuple[str, ...]) -> None:
    """`revision: YYYY-MM-DD[.suffix]` must be present, a real date, and one of Klaviyo's
    published revisions."""
    match = _REVISION.match(request.headers.get("revision") or "")
    ok = match is not None
    if match is not None:
        year, month, day = (int(part) for part in match.groups()[:3])
        try:
            datetime(year, month, day, tzinfo=UTC)
        except ValueError:
            ok = False
    if not ok:
        detail = "The revision header is required, formatted YYYY-MM-DD[.suffix]."
        raise invalid(detail, parameter="revision")
    assert match is not None
    if f"{match.group(1)}-{match.group(2)}-{match.group(3)}" not in revisions:
        detail = f"Invalid revision: {match.group(0)} is not a valid revision."
        raise invalid(detail, parameter="revision")


async def _read_body(request: web.Request, op: Operation, depth: int) -> Any:
    """Read, size-check, parse and schema-validate the body of a POST operation."""
    if op.validator is None:
        return None
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raw = b""
        request[BODY] = None
        too_large = True
    else:
        too_large = len(raw) > MAX_BODY
    if too_large:
        detail = "Request body must be at most 5 MB."
        raise ApiError(413, [ErrorItem(413, "request_too_large", detail)])
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        request[BODY] = raw[:10_000].decode("utf-8", "replace")
        raise ApiError(400, [ErrorItem(400, "parse_error", f"JSON parse error: {exc}")]) from exc
    request[BODY] = body
    request[STRINGS_FIT] = strings_fit(raw)
    errors = schema_errors(op.validator, body, depth)
    shallow = [e for e in errors if (e.pointer or "").count("/") < depth]
    if errors and (not depth or shallow):
        raise ApiError(400, shallow[:1] or errors[:1])
    if errors:
        request[SCHEMA_ERRORS] = errors  # bulk: the handler adds its own checks, then raises
    return body


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering (the client sees a disconnect)."""
    request[FAULT] = request.get(FAULT) or "drop"
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=499)


def _fault_response(kind: str) -> web.Response:
    status = int(kind)
    code = {400: "invalid", 500: "error", 503: "service_unavailable", 429: "throttled"}[status]
    detail = (
        "Injected fault: "
        + {
            400: "the request was refused.",
            500: "internal server error.",
            503: "service temporarily unavailable.",
            429: "request was throttled. Expected available in 1 second.",
        }[status]
    )
    headers = {"Retry-After": "1"} if status == 429 else {}
    return error_response(ApiError(status, [ErrorItem(status, code, detail)], headers))


def _guard(accounts: SandboxAccounts, op: Operation, handler: Handler, depth: int) -> Any:
    """Wrap an endpoint handler with faults, auth, rate limit, revision and body checks, all
    of the account the request's key names."""

    async def serve(request: web.Request) -> web.StreamResponse:
        request[OPERATION] = op.operation_id
        sandbox = request[ANSWERED_BY] = _account_of(request, accounts, op)
        if sandbox.faults.holds(op.operation_id):
            await sandbox.faults.wait_if_held()
            if request.transport is None or request.transport.is_closing():
                return _drop(request)  # its client died while it was held: never applied
        fault = sandbox.faults.draw()
        failing = sandbox.faults.failing.get(op.operation_id)
        if failing is not None:
            fault = str(failing)
        if fault is not None:
            request[FAULT] = fault
            sandbox.stats.faults[fault] += 1
            if fault == "drop":
                return _drop(request)
            if fault != "drop_after":
                faulty = _fault_response(fault)
                peek = sandbox.limiter.hit(op.operation_id, op.rate_limit, count=False)
                for name, value in peek.headers().items():
                    faulty.headers.setdefault(name, value)
                return faulty
        decision = None
        response: web.StreamResponse
        try:
            _authenticate(request, sandbox, op)
            decision = sandbox.limiter.hit(op.operation_id, op.rate_limit)
            if not decision.allowed:
                sandbox.stats.throttled += 1
                detail = (
                    f"Request was throttled. Expected available in {decision.retry_after} second."
                )
                raise ApiError(429, [ErrorItem(429, "throttled", detail)], decision.headers())
            _check_revision(request, sandbox.config.revisions)
            body = await _read_body(request, op, depth)
            response = await handler(request, sandbox, body)
        except ApiError as exc:
            response = error_response(exc)
        if decision is None:
            decision = sandbox.limiter.hit(op.operation_id, op.rate_limit, count=False)
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)
        if fault == "drop_after":
            return _drop(request)
        return response

    return serve


def _endpoint(request: web.Request) -> str:
    """A stable label for stats: method plus the route template (no trailing slash)."""
    resource = request.match_info.route.resource
    if resource is None:
        return f"{request.method} (unmatched)"
    return f"{request.method} {resource.canonical.rstrip('/') or '/'}"


@web.middleware
async def _observe(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count and log every API request; turn router errors and crashes into JSON:API errors."""
    if request.path == "/sandbox" or request.path.startswith("/sandbox/"):
        response: web.StreamResponse = await handler(request)
        return response
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "invalid")
        response = error_response(ApiError(exc.status, [ErrorItem(exc.status, code, exc.reason)]))
    except Exception:
        log.exception("sandbox handler crashed")
        item = ErrorItem(500, "error", "The sandbox failed to handle this request.")
        response = error_response(ApiError(500, [item]))
    sandbox = request.get(ANSWERED_BY) or request.app[SANDBOX]
    dropped = request.get(FAULT) in ("drop", "drop_after")
    status: int | str = "dropped" if dropped else response.status
    sandbox.stats.count(_endpoint(request), str(status))
    sandbox.log.add(
        {
            "time": datetime.now(UTC).isoformat(),
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "revision": request.headers.get("revision"),
            "operation": request.get(OPERATION),
            "status": status,
            "fault": request.get(FAULT),
            "body": request.get(BODY),
        }
    )
    return response


def create_app(config: SandboxConfig) -> web.Application:
    """A ready aiohttp application serving the Klaviyo endpoints and /sandbox/ inspection."""
    accounts = SandboxAccounts(config)
    app = web.Application(middlewares=[_observe], client_max_size=4 * MAX_BODY)
    app[SANDBOX] = accounts.default
    app[ACCOUNTS] = accounts
    for operation_id, (handler, depth) in HANDLERS.items():
        op = accounts.default.operations.get(operation_id)
        if op is None:
            raise ValueError(f"OpenAPI slice for {operation_id} missing in {config.openapi_dir}")
        serve = _guard(accounts, op, handler, depth)
        app.router.add_route(op.method, op.path, serve)
        app.router.add_route(op.method, op.path + "/", serve)
    app.router.add_routes(account_routes(accounts))
    return app
