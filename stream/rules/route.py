"""Route stage: is this call sent to Klaviyo at all, and under which metric name?

A call whose `integrations` turn Klaviyo off (`{"All": false}`, `{"Klaviyo": false}`) is
filtered first (reason `integrations`). Without an event-definitions file every identify,
track, page and screen call goes on (page and screen as the configured page and screen events,
"Viewed Page" and "Viewed Screen" by default); group calls only when a definition enables them.
With a file, only the calls an enabled definition matches (by call type, and by event name
exactly, by glob or by regex) go on, with an optional metric-name override; everything else is
filtered and counted with its reason. Segment's ecommerce v2 events get Klaviyo's standard
metric names (`ECOMMERCE_METRICS`, on by default; a definition's `metric` still wins).
alias never goes to Klaviyo: it only feeds the identity graph.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.core.calls import CALL_TYPES, Call
from stream.core.errors import ConfigError, EventDefinitionError
from stream.klaviyo.commerce import STANDARD_METRICS
from stream.rules.configfile import load_document

if TYPE_CHECKING:
    from stream.core.settings import Settings

SENDABLE = ("identify", "track", "page", "screen", "group")
DEFAULT_PAGE_EVENT = "Viewed Page"
MAX_CACHED_NAME = 256  # longer names are matched every time, never remembered
DEFAULT_SCREEN_EVENT = "Viewed Screen"
NAMELESS = ("identify", "alias", "group", "delete")  # types a definition cannot select by name



@dataclass(frozen=True, slots=True)
class Selector:
    """Which calls a definition or a transformation applies to: a type and an optional name.

    The name is the track call's event, or the page or screen call's name; `event` matches it
    exactly, `pattern` as a shell glob (`Order *`), `regex` as a full-match regular expression.
    """

    type: str | None = None
    event: str | None = None
    pattern: str | None = None
    regex: re.Pattern[str] | None = None

    def matches(self, call: Call) -> bool:
        """True when the call has the selector's type and its name matches."""
        if self.type is not None and call.type != self.type:
            return False
        name = call.event if call.type == "track" else call.name
        if self.event is not None and name != self.event:
            return False
        if self.pattern is not None and not fnmatch.fnmatchcase(name or "", self.pattern):
            return False
        return self.regex is None or self.regex.fullmatch(name or "") is not None


@dataclass(frozen=True, slots=True)
class Route:
    """Where one call goes, decided once per record: on through the pipeline (`reason` None),
    nowhere (`reason` says why: a metric label), or, filtered for `reason`, only the consent
    and list changes it asks (`asks_only`)."""

    reason: str | None = None
    asks_only: bool = False

    @property
    def filtered(self) -> bool:
        """Nothing of the call goes on."""
        return self.reason is not None and not self.asks_only


ON = Route()


@dataclass(frozen=True, slots=True)
class EventDefinition:
    """One enabled kind of call, with the Klaviyo metric name to use (None: the event's own)."""

    selector: Selector
    metric: str | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Router:
    """Decides per call. `definitions` None sends every identify/track/page/screen call.

    `page_event_name` / `screen_event_name` None (or empty) means page / screen calls are not
    sent. `ecommerce_metrics` names Segment's ecommerce v2 events as Klaviyo's standard metrics.
    """

    page_event_name: str | None = DEFAULT_PAGE_EVENT
    definitions: tuple[EventDefinition, ...] | None = None
    screen_event_name: str | None = DEFAULT_SCREEN_EVENT
    ecommerce_metrics: bool = True
    _cache: dict[tuple[str, str | None], EventDefinition | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    def _definition(self, call: Call) -> EventDefinition | None:
        name = call.event if call.type == "track" else call.name
        key = (call.type, name)
        if key not in self._cache:
            assert self.definitions is not None
            found = next((d for d in self.definitions if d.selector.matches(call)), None)
            # event names are few and short; odd input never grows the cache (entries or bytes)
            if len(self._cache) < 10_000 and len(name or "") <= MAX_CACHED_NAME:
                self._cache[key] = found
            return found
        return self._cache[key]

    def reason_to_skip(self, call: Call) -> str | None:
        """None when the call goes on to Klaviyo, else a short reason (a metric label)."""
        if call.type not in SENDABLE:
            return "identity_only"  # alias: consumed by the identity stage, nothing to send
        if not call.for_klaviyo:
            return "integrations"
        if call.type == "page" and not self.page_event_name:
            return "page_disabled"
        if call.type == "screen" and not self.screen_event_name:
            return "screen_disabled"
        if self.definitions is None:
            return "not_defined" if call.type == "group" else None
        definition = self._definition(call)
        if definition is None:
            return "not_defined"
        return None if definition.enabled else "disabled"

    def metric_name(self, call: Call) -> str | None:
        """Klaviyo metric name of an event-like call: the override, else the page or screen
        event, Klaviyo's standard name of an ecommerce event, or the event's own name."""
        if self.definitions is not None:
            definition = self._definition(call)
            if definition is not None and definition.metric:
                return definition.metric
        if call.type == "page":
            return self.page_event_name
        if call.type == "screen":
            return self.screen_event_name
        if call.type != "track":
            return None  # identify, group: profiles, not events
        if self.ecommerce_metrics:
            return STANDARD_METRICS.get(call.event or "", call.event)
        return call.event


def selector_from(entry: dict[str, Any], where: str, error: type[ConfigError]) -> Selector:
    """A `Selector` from a config entry's `type`/`event`/`pattern`/`regex` keys, validated."""
    call_type = entry.get("type")
    if call_type is not None and call_type not in CALL_TYPES:
        raise error(f"{where}: field 'type': must be one of {', '.join(CALL_TYPES)}")
    names = [k for k in ("event", "pattern", "regex") if entry.get(k) is not None]
    if len(names) > 1:
        raise error(f"{where}: fields {' and '.join(names)}: give at most one of them")
    for key in names:
        if not isinstance(entry[key], str) or not entry[key]:
            raise error(f"{where}: field '{key}': must be a non-empty string")
    if names and call_type in NAMELESS:
        raise error(f"{where}: field '{names[0]}': {call_type} calls have no event name")
    regex = None
    if entry.get("regex") is not None:
        try:
            regex = re.compile(entry["regex"])
        except re.error as exc:
            raise error(f"{where}: field 'regex': not a regular expression: {exc}") from None
    return Selector(call_type, entry.get("event"), entry.get("pattern"), regex)


def load_event_definitions(path: str | Path) -> tuple[EventDefinition, ...]:
    """Read and validate an event-definitions file (YAML or JSON), see examples/."""
    document = load_document(path, EventDefinitionError)
    entries = document.get("events")
    if not isinstance(entries, list):
        raise EventDefinitionError(f"{path}: field 'events': must be a list of definitions")
    unknown = set(document) - {"events"}
    if unknown:
        raise EventDefinitionError(f"{path}: unknown top-level field(s) {sorted(unknown)}")
    definitions = []
    for index, entry in enumerate(entries):
        where = f"{path}: events[{index}]"
        if not isinstance(entry, dict):
            raise EventDefinitionError(f"{where}: must be a mapping")
        extra = set(entry) - {"type", "event", "pattern", "regex", "metric", "enabled"}
        if extra:
            raise EventDefinitionError(f"{where}: unknown field(s) {sorted(extra)}")
        if entry.get("type") is None:
            raise EventDefinitionError(f"{where}: field 'type': required")
        if entry["type"] == "alias":
            raise EventDefinitionError(f"{where}: field 'type': alias calls are never sent")
        if entry["type"] == "delete":
            raise EventDefinitionError(
                f"{where}: field 'type': delete calls are never filtered (an erasure always goes)"
            )
        metric = entry.get("metric")
        if metric is not None and (not isinstance(metric, str) or not 0 < len(metric) <= 128):
            raise EventDefinitionError(f"{where}: field 'metric': must be 1..128 characters")
        if metric is not None and entry["type"] in ("identify", "group"):
            raise EventDefinitionError(
                f"{where}: field 'metric': {entry['type']} calls are profiles, not events"
            )
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise EventDefinitionError(f"{where}: field 'enabled': must be true or false")
        selector = selector_from(entry, where, EventDefinitionError)
        definitions.append(EventDefinition(selector, metric, enabled))
    return tuple(definitions)


def router_from_settings(settings: Settings) -> Router:
    """The router the settings describe."""
    definitions = (
        load_event_definitions(settings.event_definitions_file)
        if settings.event_definitions_file
        else None
    )
    return Router(
        settings.page_event_name or None,
        definitions,
        settings.screen_event_name or None,
        settings.ecommerce_metrics,
    )
