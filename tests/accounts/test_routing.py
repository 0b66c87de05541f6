"""Routing a record to accounts: by topic, by the `klaviyo-account` header, by a field of the
call; first match in file order, fan-out copies, deletes to every account, replays to one,
and what happens to a record no account takes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stream.accounts.config import Accounts, Rule, implicit_accounts, read_accounts_file
from stream.accounts.routing import NO_ACCOUNT, REPLAY_HEADER, any_hipaa, needs_call, route
from stream.core.calls import Call
from stream.core.settings import Settings
from tests.support.destination import write_yaml

SETTINGS = Settings(kafka_topics="analytics,brand-a-events", catalog_topics="products")


def accounts_from(tmp_path: Path, document: dict[str, Any]) -> Accounts:
    return read_accounts_file(write_yaml(tmp_path, "accounts.yaml", document), SETTINGS)


def three(**top: Any) -> dict[str, Any]:
    """By topic, by header, by field; all three read the shared topic `analytics`."""
    return {
        **top,
        "accounts": [
            {"name": "brand-a", "key": "env:A", "topics": ["brand-a-events", "products"]},
            {"name": "brand-b", "key": "env:B", "header": True},
            {"name": "acme", "key": "env:C", "field": "context.groupId", "equals": ["acme", 7]},
        ],
    }


def track(**context: Any) -> Call:
    return Call("track", "m-1", "2026-07-15T00:00:00Z", user_id="u-1", event="Placed Order",
                context=context)  # fmt: skip


def test_three_accounts_by_topic_header_and_field_on_one_shared_topic(tmp_path: Path) -> None:
    accounts = accounts_from(tmp_path, three())
    by_topic = route(accounts, "brand-a-events", None, track())
    assert by_topic.accounts == ("brand-a",) and by_topic.routes[0].via == "topic"
    by_header = route(accounts, "analytics", [("klaviyo-account", b"brand-b")], track())
    assert by_header.accounts == ("brand-b",) and by_header.routes[0].via == "header"
    by_field = route(accounts, "analytics", None, track(groupId="acme"))
    assert by_field.accounts == ("acme",) and by_field.routes[0].via == "field"
    assert route(accounts, "analytics", None, track(groupId=7)).accounts == ("acme",)
    assert route(accounts, "analytics", None, track(groupId=True)).accounts == ()
    assert by_field.reason == "acme (context.groupId = 7 or acme)"
    # the first match wins, in file order: a header on brand-a's topic is brand-a's
    both = route(accounts, "brand-a-events", [("klaviyo-account", "brand-b")], track())
    assert both.accounts == ("brand-a",)


def test_a_record_no_account_takes_is_filtered_or_dead_lettered_as_the_file_says(
    tmp_path: Path,
) -> None:
    call = track(groupId="initech-secret-plan")
    filtered = route(accounts_from(tmp_path, three()), "analytics", None, call)
    assert filtered.accounts == () and filtered.unmatched == "filter"
    assert filtered.reason == f"no account matched: filtered ({NO_ACCOUNT})"
    dead = route(accounts_from(tmp_path, three(unmatched="dead-letter")), "analytics", None, call)
    assert dead.unmatched == "dead-letter" and "initech" not in dead.reason


def test_fan_out_accounts_take_a_copy_beside_the_first_match(tmp_path: Path) -> None:
    document = three()
    document["accounts"].insert(0, {"name": "audit", "key": "env:D", "match": "all",
                                    "fan-out": True})  # fmt: skip
    document["accounts"].append({"name": "eu", "key": "env:E", "topics": ["analytics"],
                                 "fan-out": True})  # fmt: skip
    accounts = accounts_from(tmp_path, document)
    decision = route(accounts, "analytics", [("klaviyo-account", b"brand-b")], track())
    assert decision.accounts == ("audit", "brand-b", "eu")  # acme is not: brand-b came first
    assert decision.reason.startswith("audit (match: all, fan-out); brand-b (header")
    every = accounts_from(tmp_path, {**three(), "fan-out": True})
    both = route(every, "analytics", [("klaviyo-account", "brand-b")], track(groupId="acme"))
    assert both.accounts == ("brand-b", "acme")


def test_a_delete_goes_to_every_account_unless_the_file_routes_deletes(tmp_path: Path) -> None:
    delete = Call("delete", "d-1", "2026-07-15T00:00:00Z", user_id="u-1")
    everyone = route(accounts_from(tmp_path, three()), "analytics", None, delete)
    assert everyone.accounts == ("brand-a", "brand-b", "acme")
    assert {r.via for r in everyone.routes} == {"delete"}
    routed = accounts_from(tmp_path, three(deletes="routed"))
    assert route(routed, "brand-a-events", None, delete).accounts == ("brand-a",)
    assert route(routed, "analytics", None, delete).accounts == ()


def test_a_replayed_record_goes_to_the_account_it_was_dead_lettered_for_only(
    tmp_path: Path,
) -> None:
    accounts = accounts_from(tmp_path, {**three(), "fan-out": True})
    headers: list[tuple[str, str | bytes | None]] = [
        ("klaviyo-account", b"brand-b"), (REPLAY_HEADER, b"acme")
    ]  # fmt: skip
    replayed = route(accounts, "analytics", headers, track(groupId="acme"))
    assert replayed.accounts == ("acme",) and replayed.routes[0].via == "replay"
    delete = Call("delete", "d-1", "2026-07-15T00:00:00Z", user_id="u-1")
    assert route(accounts, "analytics", headers, delete).accounts == ("acme",)
    unknown = route(accounts, "analytics", [(REPLAY_HEADER, b"gone")], track())
    assert unknown.accounts == () and unknown.unmatched == "filter"


def test_a_catalog_record_has_no_call_and_is_routed_by_topic_and_header(tmp_path: Path) -> None:
    accounts = accounts_from(tmp_path, three())
    assert route(accounts, "products", None, None).accounts == ("brand-a",)
    assert route(accounts, "analytics", [("klaviyo-account", b"brand-b")], None).accounts == (
        "brand-b",
    )
    assert route(accounts, "analytics", None, None).accounts == ()  # a field needs a call


def test_the_last_header_value_wins_and_an_empty_one_matches_nothing(tmp_path: Path) -> None:
    accounts = accounts_from(tmp_path, three())
    headers: list[tuple[str, str | bytes | None]] = [
        ("klaviyo-account", b"brand-a"), ("klaviyo-account", b" brand-b ")
    ]  # fmt: skip
    assert route(accounts, "analytics", headers, track()).accounts == ("brand-b",)
    assert route(accounts, "analytics", [("klaviyo-account", None)], track()).accounts == ()


def test_without_a_file_every_record_is_the_one_accounts() -> None:
    accounts = implicit_accounts(SETTINGS)
    decision = route(accounts, "anything", [(REPLAY_HEADER, b"x")], None)
    assert decision.accounts == ("default",) and decision.routes[0].via == "all"
    assert not needs_call(accounts)


def test_what_routing_needs_and_how_dead_letters_are_redacted(tmp_path: Path) -> None:
    by_topic = accounts_from(tmp_path, {"deletes": "routed", "accounts": three()["accounts"][:2]})
    assert not needs_call(by_topic)  # topic and header: routed before the decode
    assert needs_call(accounts_from(tmp_path, three()))
    document = three()
    document["accounts"][2]["hipaa"] = True
    accounts = accounts_from(tmp_path, document)
    assert any_hipaa(accounts, ["brand-a", "acme"]) and not any_hipaa(accounts, ["brand-a"])


# a model of routing: every account has one rule over (topic, header) drawn at random

TOPICS = ("analytics", "brand-a-events")
NAMES = ("n0", "n1", "n2", "n3")
rules = st.builds(
    Rule,
    topics=st.none() | st.frozensets(st.sampled_from(TOPICS), min_size=1),
    header=st.none() | st.frozensets(st.sampled_from(NAMES), min_size=1),
)
accounts_drawn = st.lists(st.tuples(rules, st.booleans()), min_size=1, max_size=4)


@given(accounts_drawn, st.sampled_from(TOPICS), st.none() | st.sampled_from(NAMES))
def test_routing_is_the_first_exclusive_match_plus_every_fan_out_match(
    drawn: list[tuple[Rule, bool]], topic: str, asked: str | None
) -> None:
    base = implicit_accounts(SETTINGS).accounts[0]
    accounts = Accounts(
        tuple(replace(base, name=NAMES[i], rules=(rule,), fan_out=fan)
              for i, (rule, fan) in enumerate(drawn)),
        source="model",
    )  # fmt: skip
    headers = None if asked is None else [("klaviyo-account", asked)]

    def holds(rule: Rule) -> bool:
        return (rule.topics is None or topic in rule.topics) and (
            rule.header is None or asked in rule.header
        )

    matching = [(NAMES[i], fan) for i, (rule, fan) in enumerate(drawn) if holds(rule)]
    first = next((name for name, fan in matching if not fan), None)
    exclusive_ok = [name for name, fan in matching if fan or name == first]
    assert route(accounts, topic, headers, track()).accounts == tuple(exclusive_ok)
