"""The per-record stage on its own: records built to hurt, the real service's `_handle` with a
real SQLite store, an in-memory dead-letter topic; shared by the barrier property tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from stream.core.calls import Record
from stream.engine.parts import Parts
from stream.ops.produce import Encoder
from tests.support.deadletters import DeadLetterSink
from tests.support.inprocess import assembled, begin, offline_settings

TP = ("calls", 0)
ENCODER = Encoder()

BIG = {  # built on demand: a strategy's repr never carries the big values themselves
    "cart": lambda: "🛒" * 50,
    "name129": lambda: "a" * 129,
    "accents": lambda: "é" * 60_000,  # 120 KB in UTF-8, 60,000 characters
    "x110k": lambda: "x" * 110_000,
    "nested": lambda: '{"deep": ' + "[" * 300 + "1" + "]" * 300 + "}",
    "crafted_email": lambda: '{"email": "a@' + "a." * 32_000 + '@"}',
    "long_phone": lambda: '{"phone": "' + "9" * 5000 + '"}',
    "long_key": lambda: '{"' + "k" * 5000 + '": 1}',
}
TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=100, max_size=400),
    st.sampled_from(["", " ", "\u0000"]),
    st.sampled_from(["cart", "name129", "accents", "x110k"]).map(lambda k: BIG[k]()),
)
TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            "2026-05-01T10:00:00Z",
            "2026-05-01T10:00:00.123456+00:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "1990-01-01T00:00:00Z",
            "2026-05-01T10:00:00",
            "2099-01-01T00:00:00Z",
            "not a time",
            "",
        ]
    ),
    st.datetimes().map(lambda d: d.isoformat()),
)


JSON_TEXT = st.one_of(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | TEXT,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda v: json.dumps({"v": v})),  # stdlib: integers beyond 64 bits too
    st.sampled_from(["nested", "crafted_email", "long_phone", "long_key"]).map(lambda k: BIG[k]()),
    st.sampled_from(
        [
            '{"big": 123456789012345678901234567890}',
            '{"neg": -18446744073709551617}',
            "[1, 2]",
            '"just a string"',
            "{not json",
            "null",
            '{"email": " Ann@Example.COM ", "phone": "+1 415 555 0100", "firstName": "Ann"}',
            '{"email": "not-an-email", "phone": "123"}',
            '{"revenue": 1e308, "currency": "USD"}',
            '{"products": [{"product_id": "p1", "price": 1.5, "quantity": 2}, 7]}',
        ]
    ),
)


def encoded(call: dict[str, Any]) -> bytes | None:
    """The record as a producer following our schema would write it (None: it cannot)."""
    try:
        return ENCODER.encode(dict(call))
    except Exception:
        return None


async def run_stage(values: list[bytes]) -> tuple[Parts, list[Record], DeadLetterSink]:
    """The per-record stage over `values`; the ledger closed after (dead letters written)."""
    async with assembled(offline_settings()) as (running, letters):
        records = begin(running.parts.ledger, values, TP)
        await running.handler.handle(records)
        await running.parts.ledger.close(timeout=30)
        return running.parts, records, letters
