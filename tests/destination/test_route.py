"""Event definitions: which calls go to Klaviyo, under which metric name, and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.route import EventDefinitionError, Router, load_event_definitions
from tests.destination.helpers import call, write_yaml

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
    assert router.metric_name(viewed) == "Product Viewed"
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
