"""Klaviyo's filter syntax: quoted values with backslash escapes, lists, and() and bare values."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import pytest

from stream.local.sandbox import SandboxServer
from stream.local.sandbox.filters import Condition, FilterSyntaxError, parse_filter
from tests.support.sandbox import create, get

TRICKY = [
    'say "hi"',
    "back\\slash",
    "comma,inside",
    "paren)inside",
    "close\\",
    "it's",
    "ünïcødé-名前-😀",
    '"),equals(id,"x',
]


def quoted(value: str) -> str:
    """A double-quoted filter string, escaped the way a client must: \\ and \" get a backslash."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize("value", TRICKY)
def test_escaped_strings_parse_back_to_the_value(value: str) -> None:
    assert parse_filter(f"equals(external_id,{quoted(value)})") == [
        Condition("equals", "external_id", value)
    ]


def test_single_quotes_lists_and_conjunctions() -> None:
    assert parse_filter("equals(email,'o\\'neil@example.com')") == [
        Condition("equals", "email", "o'neil@example.com")
    ]
    assert parse_filter('any(id,["a,b","c]d", "e"])') == [
        Condition("any", "id", ["a,b", "c]d", "e"])
    ]
    expected = [Condition("equals", "email", "a@b.co"), Condition("equals", "external_id", "x")]
    assert parse_filter('and(equals(email,"a@b.co"),equals(external_id,"x"))') == expected
    assert parse_filter('equals(email,"a@b.co"),equals(external_id,"x")') == expected
    assert parse_filter("any(id,[])") == [Condition("any", "id", [])]


def test_bare_values_are_typed() -> None:
    [c] = parse_filter("greater-than(created,2024-05-01T10:00:00Z)")
    assert c.value == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_filter("equals(n,12)")[0].value == 12
    assert parse_filter("equals(n,-1.5)")[0].value == -1.5
    assert parse_filter("equals(b,true)")[0].value is True
    assert parse_filter("equals(x,null)")[0].value is None


@pytest.mark.parametrize(
    "text",
    [
        'equals(email,"unterminated)',
        'equals(email,"dangling\\',
        'equals(email,"a@b.co") trailing',
        'equals(email,"a@b.co"))',
        "equals(email,bare-string)",
        'equals(email "no-comma")',
        'or(equals(email,"a"),equals(email,"b"))',
        "equals(email,)",
        'any(id,["a" "b"])',
        "",
    ],
)
def test_malformed_filters_are_refused(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_filter(text)


async def test_get_profiles_finds_each_tricky_value_and_nothing_else(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    ids = {value: await create(http, sandbox.url, external_id=value) for value in TRICKY}
    decoy = await create(http, sandbox.url, external_id="x")  # what a naive split would find
    url = f"{sandbox.url}/api/profiles"
    for value, pid in ids.items():
        status, body, _ = await get(http, url, {"filter": f"equals(external_id,{quoted(value)})"})
        assert status == 200, (value, body)
        assert [p["id"] for p in body["data"]] == [pid], value
    wanted = [TRICKY[2], TRICKY[3], "nobody"]
    expression = "any(external_id,[" + ",".join(quoted(v) for v in wanted) + "])"
    status, body, _ = await get(http, url, {"filter": expression})
    assert status == 200
    assert sorted(p["id"] for p in body["data"]) == sorted([ids[TRICKY[2]], ids[TRICKY[3]]])
    assert decoy not in [p["id"] for p in body["data"]]


async def test_conditions_combine_and_time_fields_compare(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    ada = await create(http, sandbox.url, email="ada@example.com", external_id="u-1")
    await create(http, sandbox.url, email="bob@example.com", external_id="u-2")
    url = f"{sandbox.url}/api/profiles"
    cases = {
        'and(equals(email,"ada@example.com"),equals(external_id,"u-1"))': [ada],
        'and(equals(email,"ada@example.com"),equals(external_id,"u-2"))': [],
        'equals(email,"ADA@example.com"),any(external_id,["u-1","u-2"])': [ada],
        "less-than(created,2000-01-01T00:00:00Z)": [],
    }
    for text, expected in cases.items():
        status, body, _ = await get(http, url, {"filter": text})
        assert status == 200, (text, body)
        assert [p["id"] for p in body["data"]] == expected, text
    status, body, _ = await get(http, url, {"filter": "greater-than(created,2000-01-01T00:00:00Z)"})
    assert status == 200 and len(body["data"]) == 2


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('equals(email,"unterminated)', "unterminated string"),
        ('equals(first_name,"Ada")', "not supported"),
        ('greater-than(email,"a")', "not allowed"),
        ('any(_kx,["a"])', "not allowed"),
        ("equals(email,12)", "quoted string"),
        ('any(id,"not-a-list")', "list of strings"),
        ('greater-than(created,"2024-01-01T00:00:00Z")', "without quotes"),
    ],
)
async def test_bad_filters_answer_400_naming_the_parameter(
    sandbox: SandboxServer, http: aiohttp.ClientSession, text: str, says: str
) -> None:
    status, body, _ = await get(http, f"{sandbox.url}/api/profiles", {"filter": text})
    assert status == 400
    [error] = body["errors"]
    assert error["source"] == {"parameter": "filter"} and says in error["detail"]
