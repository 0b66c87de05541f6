"""The /sandbox/ endpoints of a sandbox serving several accounts.

Each /sandbox/ endpoint (`inspection.routes`) answers for one account: the one `?account=NAME`
names, the default account without it (so a single-account sandbox is unchanged).
`POST /sandbox/reset` without `?account=` resets every account. Two endpoints of their own:

- `GET /sandbox/accounts`: each account's name, whether its key is revoked, its scopes, its
  rate-limit factor, and how many profiles and events it holds (never a key);
- `POST /sandbox/accounts/{name}` `{"revoked": true}`: revoke the account's keys (every
  request with them answers 401, as Klaviyo does for a deleted key) or restore them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .inspection import routes
from .state import Sandbox, SandboxAccounts

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


def _error(status: int, detail: str) -> web.Response:
    return _json({"errors": [{"status": status, "code": "invalid", "detail": detail}]}, status)


def account_routes(accounts: SandboxAccounts) -> list[web.RouteDef]:
    """The /sandbox/ routes, each dispatching to the account `?account=` names."""
    tables = {
        name: {(r.method, r.path): r.handler for r in routes(sandbox)}
        for name, sandbox in accounts.by_name.items()
    }

    def dispatch(method: str, path: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            name = request.query.get("account", accounts.default.account.name)
            table = tables.get(name)
            if table is None:
                return _error(404, f"no account named {name!r}: see /sandbox/accounts")
            answer: web.StreamResponse = await table[(method, path)](request)
            return answer

        return handler

    async def reset(request: web.Request) -> web.Response:
        """POST /sandbox/reset[?account=NAME]: that account, or every account, as at start."""
        name = request.query.get("account")
        if name is not None and name not in accounts.by_name:
            return _error(404, f"no account named {name!r}: see /sandbox/accounts")
        for sandbox in accounts:
            if name is None or sandbox.account.name == name:
                sandbox.reset()
        return _json({"reset": True})

    async def listing(request: web.Request) -> web.Response:
        """GET /sandbox/accounts: every account, as the module docstring says."""
        return _json({"accounts": [_snapshot(sandbox) for sandbox in accounts]})

    async def change(request: web.Request) -> web.Response:
        """POST /sandbox/accounts/{name} {"revoked": bool}."""
        sandbox = accounts.by_name.get(request.match_info["name"])
        if sandbox is None:
            return _error(404, "no such account: see /sandbox/accounts")
        try:
            body = orjson.loads(await request.read())
            revoked = body["revoked"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error(400, 'body must be {"revoked": true or false}')
        if not isinstance(revoked, bool):
            return _error(400, "revoked must be true or false")
        sandbox.revoked = revoked
        return _json(_snapshot(sandbox))

    default = tables[accounts.default.account.name]
    found = [
        web.route(method, path, reset if path == "/sandbox/reset" else dispatch(method, path))
        for method, path in default
    ]
    return [
        *found,
        web.get("/sandbox/accounts", listing),
        web.post("/sandbox/accounts/{name}", change),
    ]


def _snapshot(sandbox: Sandbox) -> dict[str, Any]:
    account = sandbox.account
    return {
        "name": account.name,
        "revoked": sandbox.revoked,
        "scopes": None if account.scopes is None else list(account.scopes),
        "rate_limit_factor": account.rate_limit_factor,
        "profiles": len(sandbox.store.profiles),
        "events": len(sandbox.store.events),
    }
