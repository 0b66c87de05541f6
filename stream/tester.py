"""`klaviyo-stream test-event FILE.json`: one call through the service's own stages, then Klaviyo.

A call without `messageId` or `timestamp` gets them as the analytics libraries would give them
(a uuid4; now, UTC), and the tester says so. The call is encoded and decoded as `produce` and
`run` would, then routed, transformed (HIPAA included), resolved and mapped by the same
`Processor` the service builds from the same settings, with a throw-away in-memory identity
graph. The request it would send is printed (the API key masked); unless `dry_run`, it is sent
and Klaviyo's status and body are printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.batch import Item
from stream.calls import Record
from stream.decode import make_decoder
from stream.errors import ConfigError, DecodeError, KlaviyoError, RecordError
from stream.klaviyo import mapping
from stream.klaviyo.client import (
    CLIENT_EVENTS,
    CLIENT_PROFILES,
    EVENTS,
    JSON_API,
    PROFILE_IMPORT,
)
from stream.ledger import Outcome
from stream.pipeline import build_client, build_processor
from stream.produce import Encoder, fill_missing
from stream.settings import Settings, require_klaviyo_credentials
from stream.state import open_store

Print = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request the service would send for the call."""

    path: str
    body: dict[str, Any]


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
        skip = processor.skip(decoded)
        if skip is not None:
            return [], f"filtered by routing ({skip}): nothing would be sent"
        result = processor.process(decoded, Record("test-event", 0, 0, None, value))
    finally:
        store.close()
    if result.outcome is Outcome.HELD:
        return [], "held: the call names no person yet; the service waits for an identify"
    if not result.items:
        return [], f"{decoded.type}: nothing is sent to Klaviyo for this call"
    requests = [_request(item, client_mode) for item in result.items]
    return requests, f"{decoded.type} → {len(requests)} request(s)"


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


def describe(settings: Settings, request: PlannedRequest) -> str:
    """The request as text: method, URL, headers (key masked), pretty JSON body."""
    url = settings.klaviyo_base_url.rstrip("/") + request.path
    headers = [f"revision: {settings.klaviyo_revision}", f"Content-Type: {JSON_API}"]
    if request.path.startswith("/client/"):
        url += f"?company_id={settings.klaviyo_public_key or '<KLAVIYO_PUBLIC_KEY>'}"
    else:
        headers.insert(0, "Authorization: Klaviyo-API-Key **********")
    body = orjson.dumps(request.body, option=orjson.OPT_INDENT_2).decode()
    return "\n".join([f"POST {url}", *headers, "", body])


async def run_tester(
    settings: Settings, path: str | Path, *, dry_run: bool, out: Print = print
) -> int:
    """Print the request(s) for the call in `path`, send them unless `dry_run`; exit code."""
    call = read_call(path)
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
    async with client:
        for request in requests:
            out("")
            try:
                response = await client.post(request.path, request.body)
            except KlaviyoError as exc:
                failed = True
                out(f"Klaviyo answered {exc.status or 'nothing'}: {type(exc).__name__}")
                out(orjson.dumps({"errors": exc.errors}, option=orjson.OPT_INDENT_2).decode())
                continue
            out(f"Klaviyo answered {response.status}")
            if response.body is not None:
                out(orjson.dumps(response.body, option=orjson.OPT_INDENT_2).decode())
    return 1 if failed else 0
