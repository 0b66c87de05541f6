"""Transformations: every rule kind on a call, selection by `when`, and validation errors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from stream.klaviyo import mapping
from stream.rules.transform import TransformConfigError, Transformer, load_transformations
from tests.support.destination import call, write_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformations.yaml"


def transformer(
    tmp_path: Path, rules: list[Any], when: dict[str, Any] | None = None
) -> Transformer:
    entry: dict[str, Any] = {"rules": rules}
    if when is not None:
        entry["when"] = when
    path = write_yaml(tmp_path, "t.yaml", {"transformations": [entry]})
    return Transformer(load_transformations(path))


def order(**properties: Any) -> Any:
    return call("track", userId="u", event="Order Completed", properties=properties)


def test_rename_moves_a_value_and_leaves_the_original_call_alone(tmp_path: Path) -> None:
    t = transformer(
        tmp_path, [{"rename": {"from": "properties.total", "to": "properties.revenue"}}]
    )
    original = order(total=9.5)
    changed = t(original)
    assert changed.properties == {"revenue": 9.5}
    assert original.properties == {"total": 9.5}


def test_drop_removes_one_or_several_fields_nested_too(tmp_path: Path) -> None:
    t = transformer(tmp_path, [{"drop": ["properties.cvv", "properties.card.number"]}])
    assert t(order(cvv="123", card={"number": "4111", "brand": "visa"}, sku="A")).properties == {
        "card": {"brand": "visa"},
        "sku": "A",
    }


def test_set_creates_the_field_and_its_parents(tmp_path: Path) -> None:
    t = transformer(tmp_path, [{"set": {"field": "properties.meta.source", "value": "kafka"}}])
    assert t(order()).properties == {"meta": {"source": "kafka"}}


def test_copy_keeps_the_source(tmp_path: Path) -> None:
    t = transformer(tmp_path, [{"copy": {"from": "properties.sku", "to": "properties.id"}}])
    assert t(order(sku="A-1")).properties == {"sku": "A-1", "id": "A-1"}


def test_hash_replaces_with_sha256_in_place_or_into_another_field(tmp_path: Path) -> None:
    t = transformer(
        tmp_path,
        [
            {"hash": "properties.card"},
            {"hash": {"field": "properties.coupon", "to": "properties.c"}},
        ],
    )
    out = t(order(card="4111", coupon="SAVE10"))
    assert out.properties == {
        "card": hashlib.sha256(b"4111").hexdigest(),
        "coupon": "SAVE10",
        "c": hashlib.sha256(b"SAVE10").hexdigest(),
    }


def test_map_translates_known_values_and_applies_the_default(tmp_path: Path) -> None:
    t = transformer(
        tmp_path, [{"map": {"field": "properties.plan", "values": {"g": "Gold"}, "default": "?"}}]
    )
    assert t(order(plan="g")).properties == {"plan": "Gold"}
    assert t(order(plan="x")).properties == {"plan": "?"}
    assert t(order()).properties == {}
    without_default = transformer(
        tmp_path, [{"map": {"field": "properties.plan", "values": {"g": "Gold"}}}]
    )
    assert without_default(order(plan="x")).properties == {"plan": "x"}


def test_to_trait_moves_a_property_into_the_calls_traits(tmp_path: Path) -> None:
    t = transformer(tmp_path, [{"to_trait": {"property": "mail", "trait": "email"}}])
    out = t(order(mail="ann@example.com", sku="A"))
    assert out.properties == {"sku": "A"}
    assert out.context["traits"] == {"email": "ann@example.com"}


def test_traits_paths_mean_identify_traits(tmp_path: Path) -> None:
    t = transformer(tmp_path, [{"drop": "traits.password"}], when={"type": "identify"})
    out = t(call("identify", userId="u", traits={"password": "x", "plan": "pro"}))
    assert out.traits == {"plan": "pro"}


def test_when_selects_calls_by_type_and_name(tmp_path: Path) -> None:
    t = transformer(
        tmp_path, [{"set": {"field": "properties.hit", "value": True}}], when={"pattern": "Order *"}
    )
    assert t(order()).properties == {"hit": True}
    assert t(call("track", userId="u", event="Signed Up")).properties == {}


def test_the_example_file_loads() -> None:
    assert len(load_transformations(EXAMPLE)) == 2


@pytest.mark.parametrize(
    ("rule", "names"),
    [
        ({"rename": {"from": "properties.a"}}, ["rules[1] (rename)", "'to'", "required"]),
        ({"rename": {"from": "total", "to": "properties.b"}}, ["rules[1] (rename)", "'from'"]),
        ({"explode": "properties.a"}, ["rules[1] (explode)", "unknown rule kind"]),
        ({"map": {"field": "properties.a", "values": []}}, ["rules[1] (map)", "'values'"]),
        ({"set": {"field": "properties.a"}}, ["rules[1] (set)", "'value'"]),
        ({"hash": {"field": "properties.a", "salt": "x"}}, ["rules[1] (hash)", "'salt'"]),
        ({"to_trait": {"property": "a.b"}}, ["rules[1] (to_trait)", "'property'"]),
        ({"drop": ["properties.a", "oops.b"]}, ["rules[1] (drop)", "'field'"]),
    ],
)
def test_a_bad_rule_names_file_rule_and_field(
    tmp_path: Path, rule: dict[str, Any], names: list[str]
) -> None:
    path = write_yaml(
        tmp_path, "t.yaml", {"transformations": [{"rules": [{"drop": "properties.x"}, rule]}]}
    )
    with pytest.raises(TransformConfigError) as info:
        load_transformations(path)
    message = str(info.value)
    assert f"{path}: transformations[0]" in message
    for name in names:
        assert name in message


def test_a_bad_selector_is_named(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "t.yaml", {"transformations": [{"when": {"type": "buy"}, "rules": []}]}
    )
    with pytest.raises(TransformConfigError, match=r"transformations\[0\]\.when: field 'type'"):
        load_transformations(path)


def identify(**traits: Any) -> Any:
    return call("identify", userId="u", traits={"email": "ann@example.com", **traits})


def test_unset_removes_the_trait_and_patches_the_profile(tmp_path: Path) -> None:
    t = transformer(tmp_path, [{"unset": ["traits.plan", "traits.trial_ends"]}],
                    when={"type": "identify"})  # fmt: skip
    original = identify(plan="trial", seats=2)
    changed = t(original)
    assert changed.traits == {"email": "ann@example.com", "seats": 2}
    assert changed.options.unset == ("plan", "trial_ends")
    assert mapping.profile_meta(changed.options) == {
        "patch_properties": {"unset": ["plan", "trial_ends"]}
    }
    assert original.traits["plan"] == "trial" and not original.options.unset


def test_append_adds_values_and_two_appends_to_one_list_add_up(tmp_path: Path) -> None:
    t = transformer(tmp_path, [
        {"append": {"field": "traits.skus", "value": "A-1"}},
        {"append": {"field": "traits.skus", "value": ["B-2", 3]}},
        {"append": {"field": "traits.badges", "value": True}},
    ])  # fmt: skip
    options = t(identify()).options
    assert options.append == {"skus": ["A-1", "B-2", 3], "badges": True}


def test_rules_add_to_the_per_call_options_and_the_later_of_unset_and_append_wins(
    tmp_path: Path,
) -> None:
    t = transformer(tmp_path, [
        {"unset": "traits.skus"},
        {"append": {"field": "traits.skus", "value": "A-1"}},
        {"unset": "traits.coupon"},
    ])  # fmt: skip
    sent = call("identify", userId="u", traits={"coupon": "X"},
                integrations={"Klaviyo": {"unset": ["plan"], "suppress": True}})  # fmt: skip
    options = t(sent).options
    assert options.unset == ("plan", "coupon")
    assert options.append == {"skus": "A-1"}
    assert options.suppress is True  # other per-call options untouched


def test_profile_patches_leave_other_calls_alone(tmp_path: Path) -> None:
    t = transformer(tmp_path, [{"unset": "traits.plan"}])
    tracked = call("track", userId="u", event="E", context={"traits": {"plan": "pro"}})
    changed = t(tracked)
    assert changed.context == {"traits": {"plan": "pro"}} and not changed.options.unset


@pytest.mark.parametrize(
    ("rule", "names"),
    [
        ({"unset": "properties.plan"}, ["rules[1] (unset)", "'field'", "traits.<key>"]),
        ({"unset": "traits.a.b"}, ["rules[1] (unset)", "traits.<key>"]),
        ({"append": {"field": "traits.skus"}}, ["rules[1] (append)", "'value'", "required"]),
        ({"append": {"field": "traits.skus", "value": {"a": 1}}}, ["(append)", "'value'"]),
        ({"append": {"field": "traits.skus", "value": []}}, ["(append)", "'value'"]),
        ({"append": {"field": "context.x", "value": 1}}, ["(append)", "traits.<key>"]),
    ],
)
def test_a_bad_profile_patch_rule_names_file_rule_and_field(
    tmp_path: Path, rule: dict[str, Any], names: list[str]
) -> None:
    path = write_yaml(
        tmp_path, "t.yaml", {"transformations": [{"rules": [{"drop": "traits.x"}, rule]}]}
    )
    with pytest.raises(TransformConfigError) as info:
        load_transformations(path)
    for name in [f"{path}: transformations[0]", *names]:
        assert name in str(info.value)


def test_profile_patches_for_event_calls_are_refused_at_start(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "t.yaml", {"transformations": [
        {"when": {"type": "track"}, "rules": [{"unset": "traits.plan"}]},
    ]})  # fmt: skip
    with pytest.raises(TransformConfigError, match=r"transformations\[0\].*patch profiles"):
        load_transformations(path)
