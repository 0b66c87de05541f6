"""The string-schema reader (`decode._read_strings`) reads exactly what fastavro reads, or gives
the record back to fastavro (which then names the fault): on plain records and on records
with bytes flipped, cut or added."""

from __future__ import annotations

import io
from typing import Any

from fastavro import schemaless_reader
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.errors import DecodeError
from stream.intake.avro import load_schemas
from stream.intake.decode import LocalDecoder, _read_strings, strings_plan
from stream.ops.produce import Encoder

SCHEMAS = load_schemas().by_fingerprint
ENCODER = Encoder()
text = st.text(max_size=200)  # past 63 bytes a length takes more than one varint byte


@st.composite
def records(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["identify", "track", "page", "screen", "alias", "group"]))
    call: dict[str, Any] = {
        "type": kind,
        "messageId": draw(st.text(min_size=1, max_size=40)),
        "timestamp": "2026-02-02T12:00:00Z",
        "userId": draw(st.none() | text),
        "anonymousId": draw(st.none() | text),
        "event": draw(st.text(min_size=1)),
        "name": draw(st.none() | text),
        "previousId": draw(st.text(min_size=1)),
        "groupId": draw(st.text(min_size=1)),
        "traits": draw(st.dictionaries(text, text, max_size=3)),
        "properties": draw(st.dictionaries(text, st.integers(-(2**63), 2**63 - 1), max_size=3)),
        "context": draw(st.dictionaries(text, text, max_size=2)),
    }
    return ENCODER.encode(call)


def fastavro_read(value: bytes) -> dict[str, Any] | None:
    schema = SCHEMAS[value[2:10]]
    buf = io.BytesIO(value)
    buf.seek(10)
    try:
        record = schemaless_reader(buf, schema.writer, None)
    except Exception:
        return None
    return record if buf.tell() == len(value) else None


def fast_read(value: bytes) -> dict[str, Any] | None:
    schema = SCHEMAS.get(value[2:10])
    plan = None if schema is None else strings_plan(schema)
    assert plan is not None, "every current schema is all strings"
    return _read_strings(value, 10, plan)


@settings(max_examples=300, deadline=None)
@given(records(), st.data())
def test_the_fast_reader_agrees_with_fastavro_or_gives_the_record_back(
    value: bytes, data: st.DataObject
) -> None:
    assert fast_read(value) == fastavro_read(value) is not None
    body = bytearray(value)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(10, len(body) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "add"]))
        if action == "flip":
            body[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del body[at:]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        if len(body) <= 11:
            break
    damaged = bytes(body)
    fast = fast_read(damaged)
    if fast is not None:
        assert fast == fastavro_read(damaged), "read what fastavro does not"


def test_a_record_the_fast_reader_refuses_is_decoded_by_fastavro_with_its_reason() -> None:
    value = ENCODER.encode(
        {"type": "track", "messageId": "m", "timestamp": "2026-01-01T00:00:00Z", "userId": "u",
         "event": "E", "properties": {}}  # fmt: skip
    )
    decoder = LocalDecoder()
    assert decoder.decode(value).event == "E"
    for bad, reason in [
        (value[:-2], "truncated Avro body"),
        (value + b"\x00", "trailing bytes"),
        (value.replace(b"\x02E", b"\x02\xff", 1), "corrupt Avro body: UnicodeDecodeError"),
    ]:
        try:
            decoder.decode(bad)
        except DecodeError as exc:
            assert reason in str(exc)
        else:
            raise AssertionError(f"{bad!r} decoded")


def test_older_schema_versions_are_left_to_fastavro() -> None:
    older = [s for s in SCHEMAS.values() if s.reader is not None]
    assert older and all(strings_plan(s) is None for s in older)
