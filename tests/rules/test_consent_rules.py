"""The consent rules file and what calls ask: checks with one clear line, merging (the later
source wins per channel, list and suppression), trait selectors, group lists, client mode, and
which changes a newer call overtook."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stream.core.calls import normalize
from stream.core.errors import ConsentConfigError
from stream.rules.consent import (
    MARK,
    Asks,
    ConsentRules,
    check_client_mode,
    consent_traits,
    load_consent_rules,
    still_current,
)
from tests.support.destination import write_yaml


def call(call_type: str, **fields: Any) -> Any:
    return normalize(call_type, {"messageId": "m-1", "timestamp": "2026-01-01T00:00:00Z",
                                 **fields})  # fmt: skip


def rules(tmp_path: Path, *entries: dict[str, Any]) -> ConsentRules:
    return load_consent_rules(write_yaml(tmp_path, "consent.yaml", {"rules": list(entries)}))


def test_the_example_file_loads_and_asks_what_it_says() -> None:
    example = load_consent_rules(Path(__file__).parents[2] / "examples" / "consent.yaml")
    signup = call("identify", userId="u1", traits={"email": "a@x.io", "newsletter": True})
    assert example.asks(signup).subscribe == ("email",)
    assert example.asks(call("identify", userId="u1", traits={"newsletter": False})) == Asks()


def test_rules_select_by_type_name_and_trait_values(tmp_path: Path) -> None:
    found = rules(
        tmp_path,
        {"when": {"type": "identify", "traits": {"newsletter": True}},
         "subscribe": {"email": True, "list_id": "NEWS01"}},
        {"when": {"type": "track", "pattern": "SMS Opt*"}, "unsubscribe": "sms"},
        {"when": {"type": "track", "traits": {"vip": True}}, "lists": {"add": ["VIP001"]}},
    )  # fmt: skip
    yes = call("identify", userId="u1", traits={"newsletter": True})
    no = call("identify", userId="u1", traits={"newsletter": "true"})  # a string is not true
    assert found.asks(yes) == Asks(subscribe=("email",), list_id="NEWS01")
    assert found.asks(no) == Asks()
    assert found.asks(call("track", userId="u1", event="SMS Opt Out")).unsubscribe == ("sms",)
    vip = call("track", userId="u1", event="Viewed", context={"traits": {"vip": True}})
    assert found.asks(vip).add == ("VIP001",)  # other calls' traits are context.traits


def test_the_later_source_wins_per_channel_list_and_suppression(tmp_path: Path) -> None:
    found = rules(
        tmp_path,
        {"when": {"type": "identify"}, "subscribe": {"email": True, "sms": True},
         "lists": {"add": ["A", "B"]}, "suppress": True},
        {"when": {"type": "identify"}, "unsubscribe": ["sms"], "lists": {"remove": ["B"]}},
    )  # fmt: skip
    plain = call("identify", userId="u1")
    assert found.asks(plain) == Asks(
        subscribe=("email",), unsubscribe=("sms",), suppress=True, add=("A",), remove=("B",)
    )
    # the call's own options come last: they win over every rule
    own = call("identify", userId="u1", integrations={"Klaviyo": {
        "unsubscribe": ["email"], "suppress": False, "lists": {"add": ["B"]},
    }})  # fmt: skip
    assert found.asks(own) == Asks(
        unsubscribe=("email", "sms"), suppress=False, add=("A", "B")
    )


def test_group_calls_join_the_list_mapped_to_their_group(tmp_path: Path) -> None:
    found = rules(tmp_path, {"when": {"type": "group"}, "group_lists": {"acme": "ACME01"}})
    assert found.asks(call("group", userId="u1", groupId="acme")).add == ("ACME01",)
    assert found.asks(call("group", userId="u1", groupId="globex")) == Asks()


def test_no_rules_and_no_options_ask_nothing() -> None:
    assert not ConsentRules().asks(call("track", userId="u1", event="Viewed"))
    patch = call("identify", userId="u1", integrations={"Klaviyo": {"unset": ["plan"]}})
    assert not ConsentRules().asks(patch)  # profile patches are not consent


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"rule": []}, "unknown top-level field(s) ['rule']; use rules"),
        ({"rules": {}}, "field 'rules': must be a list of rules"),
        ({"rules": [{"when": {"type": "track"}}]}, "rules[0]: asks nothing; give one of"),
        ({"rules": [{"when": {"type": "track"}, "subscribe": {"email": "yes"}}]},
         "rules[0]: field 'subscribe.email': must be true or false"),
        ({"rules": [{"when": {"type": "track"}, "unsubscribe": ["fax"]}]},
         "rules[0]: field 'unsubscribe': unknown channel(s) ['fax']; use email, sms"),
        ({"rules": [{"when": {"type": "teleport"}, "suppress": True}]},
         "rules[0]: field 'type': must be one of"),
        ({"rules": [{"when": {"type": "identify", "event": "x"}, "suppress": True}]},
         "rules[0]: field 'event': identify calls have no event name"),
        ({"rules": [{"when": {"type": "track", "colour": "red"}, "suppress": True}]},
         "rules[0]: field 'when': unknown key(s) ['colour']"),
        ({"rules": [{"when": {"type": "track"}, "group_lists": {"acme": "ACME01"}}]},
         "rules[0]: field 'group_lists': only for group calls"),
        ({"rules": [{"when": {"type": "delete"}, "suppress": True}]},
         "rules[0]: field 'when.type': a delete call asks no consent"),
        ({"rules": [{"when": {"type": "track"}, "lists": {"add": ["A"], "remove": ["A"]}}]},
         "rules[0]: field 'lists': list(s) ['A'] both added and removed"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_file_rule_and_field(
    tmp_path: Path, document: dict[str, Any], message: str
) -> None:
    path = write_yaml(tmp_path, "consent.yaml", document)
    with pytest.raises(ConsentConfigError) as caught:
        load_consent_rules(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


@pytest.mark.parametrize(
    ("rule", "refused"),
    [
        ({"when": {"type": "track"}, "unsubscribe": ["email"]}, "rules[0] (unsubscribe)"),
        ({"when": {"type": "track"}, "suppress": False}, "rules[0] (suppress)"),
        ({"when": {"type": "track"}, "lists": {"add": ["A"]}}, "rules[0] (lists)"),
        ({"when": {"type": "group"}, "group_lists": {"g": "A"}}, "rules[0] (group_lists)"),
        ({"when": {"type": "track"}, "subscribe": {"email": True}}, "rules[0] (subscribe)"),
    ],
)
def test_client_mode_refuses_at_start_what_it_cannot_send(
    tmp_path: Path, rule: dict[str, Any], refused: str
) -> None:
    found = rules(tmp_path, rule)
    with pytest.raises(ConsentConfigError, match=re.escape(f"consent.yaml: {refused}: ")):
        check_client_mode(found, "consent.yaml")
    check_client_mode(  # a subscription to a list is what client mode does
        rules(tmp_path, {"when": {"type": "track"},
                         "subscribe": {"email": True, "list_id": "A"}}), "consent.yaml",
    )  # fmt: skip


def test_a_change_is_superseded_only_by_a_newer_calls_mark() -> None:
    asks = Asks(subscribe=("email", "sms"), suppress=True, add=("A",), remove=("B",))
    mine = consent_traits(asks, "m-1", 100.0)
    assert still_current(asks, mine, 100.0) == (asks, [])
    newer = {**mine, **consent_traits(Asks(unsubscribe=("email",), remove=("A",)), "m-2", 200.0)}
    current, overtaken = still_current(asks, newer, 100.0)
    # the email channel (subscription and suppression) and list A moved on; sms and B did not
    assert current == Asks(subscribe=("sms",), remove=("B",))
    assert sorted(overtaken) == ["email", "email", "list"]
    assert still_current(asks, {}, 100.0) == (asks, [])  # nothing marked: nothing newer


def test_case5_a_mark_of_another_older_call_is_no_reason_to_drop_a_change() -> None:
    """The person's mark names another call (its subscribe, read within the identity cache's
    lifetime, say): the later opt-out is still current; only a newer call's mark supersedes."""
    subscribed = consent_traits(Asks(subscribe=("sms",)), "subscribe-call", 100.0)
    opt_out = Asks(unsubscribe=("sms",))
    assert still_current(opt_out, subscribed, 400.0) == (opt_out, [])
    assert still_current(opt_out, subscribed, 50.0) == (Asks(), ["sms"])  # older than it
    legacy = {MARK + "sms": {"change": "subscribed", "call": "older-release"}}  # no time
    assert still_current(opt_out, legacy, 400.0) == (opt_out, [])


def test_doctor_checks_the_consent_file_like_the_other_config_files(tmp_path: Path) -> None:
    from stream.core.settings import Settings
    from stream.ops.doctor import run_checks

    good = write_yaml(tmp_path, "good.yaml", {"rules": [
        {"when": {"type": "track", "event": "Opt Out"}, "unsubscribe": ["email"]}]})  # fmt: skip

    def consent_line(**values: Any) -> str:
        settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", **values)
        return next(c for c in run_checks(settings) if c.name == "consent rules").line()

    assert consent_line() == "✓ consent rules: none (per-call options only)"
    assert consent_line(consent_file=good) == f"✓ consent rules: {good}, 1 rule(s)"
    refused = consent_line(consent_file=good, klaviyo_mode="client", klaviyo_public_key="SBXPUB")
    assert refused.startswith(f"✗ consent rules: {good}: rules[0] (unsubscribe): KLAVIYO_MODE")
    assert refused.endswith("→ fix: correct CONSENT_FILE (or KLAVIYO_MODE)")
