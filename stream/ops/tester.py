"""`klaviyo-stream test-event FILE.json`: one call through the service's own stages, then Klaviyo.

A call without `messageId` or `timestamp` gets them as the analytics libraries would give them
(a uuid4; now, UTC), and the tester says so. The call is encoded and decoded as `produce` and
`run` would, then routed, transformed (HIPAA included), resolved and mapped by the same
`Processor` the service builds from the same settings, with a throw-away in-memory identity
graph. The request it would send is printed (the API key masked); unless `dry_run`, it is sent
and Klaviyo's status and body are printed. Consent, list and deletion requests are shown too,
one per change (the service batches them); a list change or a deletion by external_id names
the profile id a lookup finds when it is sent (`<profile id>` in a dry run), and a change
that cannot be sent is named with its reason. A catalog record shows its bulk job instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.completion.ledger import Outcome
from stream.core.calls import Record
from stream.core.clients import require_klaviyo_credentials
from stream.core.errors import ConfigError, DecodeError, KlaviyoError, RecordError
from stream.core.settings import Settings
from stream.delivery.actions import Action
from stream.delivery.batch import Item
from stream.delivery.deliver_actions import PROFILE_ID, single_request
from stream.engine.pipeline import build_client, build_processor
from stream.intake.decode import make_decoder
from stream.klaviyo import mapping
from stream.klaviyo.client import (
    CLIENT_EVENTS,
    CLIENT_PROFILES,
    EVENTS,
    JSON_API,
    PROFILE_IMPORT,
    PROFILES,
    KlaviyoClient,
)
from stream.klaviyo.consent import DELETION
from stream.klaviyo.merge import MATCH_ORDER, equals_filter
from stream.ops.produce import Encoder, fill_missing
from stream.ops.produce_catalog import is_catalog
from stream.ops.tester_catalog import run_catalog_tester
from stream.state import open_store

Print = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request the service would send for the call."""

    path: str
    body: dict[str, Any]
    method: str = "POST"
    lookup: dict[str, str] | None = None  # identifiers whose profile id the body needs


def read_call(path: str | Path) -> dict[str, Any]:
    """The Segment JSON call in `path`; a `ConfigError` naming the file when it is not one."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        call = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(call, dict):
        raise ConfigError(f"{path}: must hold one JSON object (a Segment call)")
    return call


def plan(settings: Settings, call: dict[str, Any]) -> tuple[list[PlannedRequest], str]:
    """The requests for one call and a one-line verdict; `RecordError` if it would be refused."""
    client_mode = settings.klaviyo_mode == "client"
    try:
        value = Encoder().encode(call)
    except (ValueError, TypeError) as exc:  # fastavro: a field missing or of the wrong type
        raise DecodeError(f"not a valid {call.get('type')} call: {exc}") from None
    decoded = make_decoder(None).decode(value)
    store = open_store("sqlite:///:memory:", settings.dedup_window_seconds)
    try:
        processor = build_processor(settings, store)
        route = processor.route(decoded)
        if route.filtered:
            return [], f"filtered by routing ({route.reason}): nothing would be sent"
        result = processor.process(decoded, Record("test-event", 0, 0, None, value), route)
    finally:
        store.close()
    refused = [f"\nrefused ({f.error.stage}): {f.error}" for f in result.failures]
    if result.outcome is Outcome.HELD:
        return [], "held: the call names no person yet; the service waits for an identify" + (
            "".join(refused)
        )
    if not result.items and not result.actions:
        return [], f"{decoded.type}: nothing is sent to Klaviyo for this call" + "".join(refused)
    requests = [_request(item, client_mode) for item in result.items]
    requests += [_action(action, client_mode) for action in result.actions]
    return requests, f"{decoded.type} → {len(requests)} request(s)" + "".join(refused)


def _request(item: Item, client_mode: bool) -> PlannedRequest:
    if item.event is None:
        return PlannedRequest(
            CLIENT_PROFILES if client_mode else PROFILE_IMPORT,
            mapping.profile_import_body(item.profile),
        )
    return PlannedRequest(
        CLIENT_EVENTS if client_mode else EVENTS,
        mapping.single_event_body(item.event, item.profile),
    )


def _action(action: Action, client_mode: bool) -> PlannedRequest:
    """A consent, list or deletion change, as the request it makes alone."""
    method, path, body = single_request(action, client_mode)
    lookup = None
    if action.kind in ("list_add", "list_remove"):  # the person's profile
        lookup = {k: str(v) for k, v in action.profile.items() if k in MATCH_ORDER and v}
    elif action.kind == "deletion" and action.lookups[0][0] == "external_id":  # whoever holds it
        lookup = {"external_id": action.lookups[0][1]}
    return PlannedRequest(path, body, method, lookup)


async def _profile_id(
    client: KlaviyoClient, request: PlannedRequest, known: str | None
) -> str | None:
    """The profile id a list change names (this call's upsert answered with it, else a lookup
    by the strongest identifier) or a deletion by external_id names (a lookup); None when no
    profile has them."""
    assert request.lookup is not None
    if known is not None and request.path != DELETION:
        return known
    for key in MATCH_ORDER:
        value = request.lookup.get(key)
        if value:
            found = await client.get(PROFILES + equals_filter(key, value))
            data = found.body.get("data") if isinstance(found.body, dict) else None
            if data:
                return str(data[0]["id"])
    return None


def _with_id(request: PlannedRequest, profile_id: str) -> PlannedRequest:
    text = orjson.dumps(request.body).decode().replace(PROFILE_ID, profile_id)
    return PlannedRequest(request.path, orjson.loads(text), request.method)


def describe(settings: Settings, request: PlannedRequest) -> str:
    """The request as text: method, URL, headers (key masked), pretty JSON body."""
    url = settings.klaviyo_base_url.rstrip("/") + request.path
    headers = [f"revision: {settings.klaviyo_revision}", f"Content-Type: {JSON_API}"]
    if request.path.startswith("/client/"):
        url += f"?company_id={settings.klaviyo_public_key or '<KLAVIYO_PUBLIC_KEY>'}"
    else:
        headers.insert(0, "Authorization: Klaviyo-API-Key **********")
    body = orjson.dumps(request.body, option=orjson.OPT_INDENT_2).decode()
    return "\n".join([f"{request.method} {url}", *headers, "", body])


async def run_tester(
    settings: Settings, path: str | Path, *, dry_run: bool, out: Print = print
) -> int:
    """Print the request(s) for the call in `path`, send them unless `dry_run`; exit code."""
    call = read_call(path)
    if is_catalog(call):  # a catalog record: the bulk job it makes (`tester_catalog`)
        return await run_catalog_tester(settings, call, dry_run=dry_run, out=out)
    filled = fill_missing(call)
    if filled:
        values = ", ".join(f"{name} {call[name]}" for name in filled)
        out(f"filled {values} (as the analytics libraries do: uuid4; now, UTC)")
    try:
        requests, verdict = plan(settings, call)
    except RecordError as exc:
        out(f"refused ({exc.stage}): {exc}")
        out("the service would write this record to the dead-letter topic")
        return 1
    out(verdict)
    for request in requests:
        out("")
        out(describe(settings, request))
    if dry_run or not requests:
        return 0
    require_klaviyo_credentials(settings)
    client = build_client(settings, max_connections=1)
    failed = False
    profile_id: str | None = None  # the profile this call's upsert answered with
    async with client:
        for request in requests:
            out("")
            try:
                if request.lookup is not None:
                    found = await _profile_id(client, request, profile_id)
                    if found is None:
                        named = " or ".join(request.lookup)
                        if request.path == DELETION:
                            out(f"no Klaviyo profile has this {named}: nothing to delete")
                            continue
                        out(
                            f"no Klaviyo profile has this {named}: nothing to put on a list "
                            "(the service makes the profile from the identifiers first)"
                        )
                        failed = True
                        continue
                    request = _with_id(request, found)
                    out(f"{request.method} {request.path} with profile id {_named(request)}")
                response = await client.request(request.method, request.path, request.body)
                if request.path == PROFILE_IMPORT and isinstance(response.body, dict):
                    profile_id = (response.body.get("data") or {}).get("id") or profile_id
            except KlaviyoError as exc:
                failed = True
                out(f"Klaviyo answered {exc.status or 'nothing'}: {type(exc).__name__}")
                out(orjson.dumps({"errors": exc.errors}, option=orjson.OPT_INDENT_2).decode())
                continue
            out(f"Klaviyo answered {response.status}")
            if response.body is not None:
                out(orjson.dumps(response.body, option=orjson.OPT_INDENT_2).decode())
    return 1 if failed else 0


def _named(request: PlannedRequest) -> str:
    """The profile id a list or deletion request carries (for the tester's output)."""
    data = request.body.get("data")
    if isinstance(data, list) and data:
        return str(data[0].get("id"))
    if isinstance(data, dict):
        return str(data["attributes"]["profile"]["data"].get("id"))
    return "?"
