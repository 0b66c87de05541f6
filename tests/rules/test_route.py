"""Event definitions: which calls go to Klaviyo, under which metric name, and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.core.settings import Settings
from stream.rules.route import (
    EventDefinitionError,
    Router,
    load_event_definitions,
    router_from_settings,
)
from tests.support.destination import call, write_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "event-definitions.yaml"


def test_without_definitions_identify_track_and_page_go_and_alias_does_not() -> None:
    router = Router()
    assert router.reason_to_skip(call("identify", userId="u")) is None
    assert router.reason_to_skip(call("track", userId="u", event="Anything")) is None
    assert router.reason_to_skip(call("page", userId="u", name="Home")) is None
    alias = call("alias", userId="u", previousId="a")
    assert router.reason_to_skip(alias) == "identity_only"
    assert router.metric_name(call("page", userId="u", name="Home")) == "Viewed Page"


def test_page_calls_are_renamed_or_ignored_per_config() -> None:
    page = call("page", userId="u", name="Pricing")
    assert Router(page_event_name="Page View").metric_name(page) == "Page View"
    assert Router(page_event_name=None).reason_to_skip(page) == "page_disabled"


def test_example_file_enables_exact_glob_and_regex_names_with_overrides() -> None:
    router = Router(definitions=load_event_definitions(EXAMPLE))
    order = call("track", userId="u", event="Order Completed")
    assert router.reason_to_skip(order) is None
    assert router.metric_name(order) == "Placed Order"
    viewed = call("track", userId="u", event="Product Viewed")
    assert router.reason_to_skip(viewed) is None
    assert router.metric_name(viewed) == "Viewed Product"  # ECOMMERCE_METRICS, on by default
    assert router.reason_to_skip(call("track", userId="u", event="Checkout Step 2")) is None
    assert router.reason_to_skip(call("track", userId="u", event="Checkout Step x")) == (
        "not_defined"
    )
    assert router.reason_to_skip(call("track", userId="u", event="Debug Ping")) == "disabled"
    assert router.reason_to_skip(call("track", userId="u", event="Signed Up")) == "not_defined"
    assert router.reason_to_skip(call("identify", userId="u")) is None
    assert router.reason_to_skip(call("page", userId="u", name="Home")) is None


def test_identify_is_filtered_when_no_definition_enables_it(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "defs.yaml", {"events": [{"type": "track", "event": "A"}]})
    router = Router(definitions=load_event_definitions(path))
    assert router.reason_to_skip(call("identify", userId="u")) == "not_defined"
    assert router.reason_to_skip(call("page", userId="u")) == "not_defined"


def test_definitions_load_from_json_too(tmp_path: Path) -> None:
    path = tmp_path / "defs.json"
    path.write_text('{"events": [{"type": "track", "pattern": "A*", "metric": "Alpha"}]}')
    router = Router(definitions=load_event_definitions(path))
    assert router.metric_name(call("track", userId="u", event="Abc")) == "Alpha"


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ({"event": "A"}, ["events[1]", "'type'", "required"]),
        ({"type": "purchase"}, ["events[1]", "'type'"]),
        ({"type": "track", "regex": "(unclosed"}, ["events[1]", "'regex'"]),
        ({"type": "track", "event": "A", "pattern": "A*"}, ["events[1]", "event and pattern"]),
        ({"type": "track", "metric": ""}, ["events[1]", "'metric'"]),
        ({"type": "identify", "event": "A"}, ["events[1]", "'event'"]),
        ({"type": "group", "pattern": "A*"}, ["events[1]", "'pattern'", "no event name"]),
        ({"type": "group", "metric": "Joined"}, ["events[1]", "'metric'", "profiles"]),
        ({"type": "alias"}, ["events[1]", "'type'"]),
        ({"type": "track", "colour": "red"}, ["events[1]", "colour"]),
    ],
)
def test_a_bad_definition_names_file_entry_and_field(
    tmp_path: Path, entry: dict[str, object], names: list[str]
) -> None:
    path = write_yaml(tmp_path, "defs.yaml", {"events": [{"type": "identify"}, entry]})
    with pytest.raises(EventDefinitionError) as info:
        load_event_definitions(path)
    message = str(info.value)
    assert path in message
    for name in names:
        assert name in message


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EventDefinitionError, match="no such file"):
        load_event_definitions(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("events: [type: track\n")
    with pytest.raises(EventDefinitionError, match="broken.yaml: not valid YAML"):
        load_event_definitions(broken)


def test_integrations_turn_klaviyo_off_before_any_definition_is_asked(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "defs.yaml", {"events": [
        {"type": "identify"}, {"type": "track", "event": "E"}, {"type": "page"},
        {"type": "screen"}, {"type": "group"},
    ]})  # fmt: skip
    off = {"All": False}
    calls = [
        call("identify", userId="u", integrations=off),
        call("track", userId="u", event="E", integrations={"Klaviyo": False}),
        call("page", userId="u", integrations=off),
        call("screen", userId="u", integrations=off),
        call("group", userId="u", groupId="g", integrations=off),
    ]
    for router in (Router(), Router(definitions=load_event_definitions(path))):
        assert [router.reason_to_skip(c) for c in calls] == ["integrations"] * 5
        back_on = call("track", userId="u", event="E", integrations={"All": False, "Klaviyo": {}})
        assert router.reason_to_skip(back_on) is None
    alias = call("alias", userId="u", previousId="a", integrations=off)
    assert Router().reason_to_skip(alias) == "identity_only"


def test_screen_calls_are_viewed_screen_events_renamed_routed_or_ignored(tmp_path: Path) -> None:
    home = call("screen", userId="u", name="Home")
    assert Router().reason_to_skip(home) is None
    assert Router().metric_name(home) == "Viewed Screen"
    assert Router(screen_event_name="App Screen").metric_name(home) == "App Screen"
    assert Router(screen_event_name=None).reason_to_skip(home) == "screen_disabled"
    path = write_yaml(tmp_path, "defs.yaml", {"events": [
        {"type": "screen", "event": "Checkout", "metric": "Opened Checkout Screen"},
        {"type": "screen", "pattern": "Debug*", "enabled": False},
    ]})  # fmt: skip
    router = Router(definitions=load_event_definitions(path))
    checkout = call("screen", userId="u", name="Checkout")
    assert router.reason_to_skip(checkout) is None
    assert router.metric_name(checkout) == "Opened Checkout Screen"
    assert router.reason_to_skip(call("screen", userId="u", name="Debug Menu")) == "disabled"
    assert router.reason_to_skip(home) == "not_defined"


def test_group_calls_are_sent_only_when_a_definition_enables_them(tmp_path: Path) -> None:
    group = call("group", userId="u", groupId="acme", traits={"name": "Acme"})
    assert Router().reason_to_skip(group) == "not_defined"
    path = write_yaml(tmp_path, "defs.yaml", {"events": [{"type": "group"}]})
    router = Router(definitions=load_event_definitions(path))
    assert router.reason_to_skip(group) is None
    assert router.metric_name(group) is None  # a profile update, not an event
    disabled = write_yaml(tmp_path, "off.yaml", {"events": [{"type": "group", "enabled": False}]})
    assert Router(definitions=load_event_definitions(disabled)).reason_to_skip(group) == (
        "disabled"
    )


STANDARD = {
    "Product Viewed": "Viewed Product",
    "Product Added": "Added to Cart",
    "Checkout Started": "Started Checkout",
    "Order Completed": "Placed Order",
    "Order Fulfilled": "Fulfilled Order",
    "Order Cancelled": "Cancelled Order",
    "Order Refunded": "Refunded Order",
}


@pytest.mark.parametrize(("segment", "klaviyo"), STANDARD.items())
def test_ecommerce_events_get_klaviyos_standard_metric_unless_turned_off(
    segment: str, klaviyo: str
) -> None:
    event = call("track", userId="u", event=segment)
    assert Router().metric_name(event) == klaviyo
    assert Router(ecommerce_metrics=False).metric_name(event) == segment


def test_a_definitions_metric_wins_over_the_standard_name_and_other_events_keep_theirs(
    tmp_path: Path,
) -> None:
    path = write_yaml(tmp_path, "defs.yaml", {"events": [
        {"type": "track", "event": "Order Completed", "metric": "Order Completed"},
        {"type": "track", "pattern": "*"},
    ]})  # fmt: skip
    router = Router(definitions=load_event_definitions(path))
    assert router.metric_name(call("track", userId="u", event="Order Completed")) == (
        "Order Completed"
    )
    assert router.metric_name(call("track", userId="u", event="Order Refunded")) == (
        "Refunded Order"
    )
    assert router.metric_name(call("track", userId="u", event="order completed")) == (
        "order completed"  # names match exactly, as Segment's spec writes them
    )


def test_router_from_settings_reads_the_screen_and_ecommerce_settings() -> None:
    settings = Settings(screen_event_name="", ecommerce_metrics=False)
    router = router_from_settings(settings)
    assert router.reason_to_skip(call("screen", userId="u", name="Home")) == "screen_disabled"
    assert router.metric_name(call("track", userId="u", event="Order Completed")) == (
        "Order Completed"
    )
    default = router_from_settings(Settings())
    assert default.metric_name(call("screen", userId="u", name="Home")) == "Viewed Screen"
    assert default.metric_name(call("track", userId="u", event="Order Completed")) == (
        "Placed Order"
    )
