"""Klaviyo's `?filter=` expressions, parsed into conditions (JSON:API filtering syntax).

    filter     := condition ("," condition)*            top-level commas mean AND
    condition  := "and(" condition ("," condition)* ")"
                | operator "(" field "," value ")"      e.g. equals(email,"a@b.co")
    value      := string | "[" [value ("," value)*] "]" | bare
    string     := '"' … '"'  or  "'" … "'"              a backslash takes the next character
                                                        literally: \\" \\' \\\\
    bare       := true | false | null | a number | a date-time (written without quotes)

Inside a string every other character is literal: commas, parentheses, brackets, spaces and
any Unicode. The query parameter itself is URI-encoded by the client and decoded before this
parser sees it. Anything else (an unterminated string, a dangling backslash, trailing text) is
a `FilterSyntaxError` that the endpoint answers with a 400 naming the `filter` parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .validation import parse_time

_OPERATOR = re.compile(r"[a-z][a-z-]*")
_FIELD = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$-]*")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_BARE_END = frozenset(",)]")


class FilterSyntaxError(ValueError):
    """The filter text does not follow Klaviyo's syntax; the message says where."""


@dataclass(frozen=True)
class Condition:
    """One `operator(field,value)`; `value` is a str, number, bool, None, datetime or list."""

    operator: str
    field: str
    value: Any


def parse_filter(text: str) -> list[Condition]:
    """The conditions of a filter expression (all must hold), or FilterSyntaxError."""
    parser = _Parser(text)
    conditions = parser.conditions()
    parser.skip_space()
    if parser.pos != len(text):
        raise parser.error("unexpected text")
    return conditions


class _Parser:
    """A recursive-descent reader over the filter text; `pos` is the next character."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"{what} at position {self.pos} of the filter")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_space()
        if not self.text.startswith(char, self.pos):
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip_space()
        found = pattern.match(self.text, self.pos)
        if not found:
            raise self.error(f"expected {what}")
        self.pos = found.end()
        return found.group()

    def conditions(self) -> list[Condition]:
        found = self.condition()
        while self.peek() == ",":
            self.pos += 1
            found.extend(self.condition())
        return found

    def condition(self) -> list[Condition]:
        operator = self.match(_OPERATOR, "an operator such as equals")
        self.expect("(")
        if operator == "and":
            inner = self.conditions()
            self.expect(")")
            return inner
        if operator in ("or", "not"):
            raise self.error(f"{operator}() is not supported")
        field = self.match(_FIELD, "a field name")
        self.expect(",")
        value = self.value()
        self.expect(")")
        return [Condition(operator, field, value)]

    def value(self) -> Any:
        char = self.peek()
        if char in ('"', "'"):
            return self.string(char)
        if char == "[":
            return self.array()
        return self.bare()

    def string(self, quote: str) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(text):
                    raise self.error("a backslash ends the filter")
                out.append(text[self.pos + 1])
                self.pos += 2
            elif char == quote:
                self.pos += 1
                return "".join(out)
            else:
                out.append(char)
                self.pos += 1
        raise self.error("unterminated string")

    def array(self) -> list[Any]:
        self.pos += 1  # the opening bracket
        items: list[Any] = []
        if self.peek() == "]":
            self.pos += 1
            return items
        items.append(self.value())
        while self.peek() == ",":
            self.pos += 1
            items.append(self.value())
        self.expect("]")
        return items

    def bare(self) -> Any:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _BARE_END:
            self.pos += 1
        token = self.text[start : self.pos].strip()
        if not token:
            raise self.error("expected a value")
        if token in ("true", "false"):
            return token == "true"
        if token == "null":
            return None
        if _NUMBER.fullmatch(token):
            return float(token) if any(c in token for c in ".eE") else int(token)
        moment = parse_time(token) if token[:1].isdigit() else None
        if moment is None:
            raise FilterSyntaxError(
                f"{token!r} is not a value: strings need quotes (position {start})"
            )
        return moment
