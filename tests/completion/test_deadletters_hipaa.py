"""HIPAA mode's dead letters through the real broker: a call's is a redacted copy without its
key; a catalog record's is the record as it was (products, not people), key and value, so that
`dlq replay` can send it again (redacted, it lost both: a product row is not a call)."""

from __future__ import annotations

from typing import Any

from stream.completion.deadletter import DeadLetter
from stream.core.calls import Record
from stream.core.errors import CatalogResourceFailed, MappingError
from stream.engine.pipeline import build_dead_letters
from stream.intake.decode import make_decoder
from stream.ops.produce import Encoder
from stream.rules.transform import transformer_from_settings
from tests.support import read_topic
from tests.support.inprocess import offline_settings


async def test_in_hipaa_mode_a_catalog_dead_letter_keeps_its_record_and_a_calls_is_redacted(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    calls, catalog, dlq = topic_factory(1), topic_factory(1), topic_factory(1)
    settings = offline_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topics=calls,
        catalog_topics=catalog,
        dlq_topic=dlq,
        hipaa_mode=True,
    )
    encoder = Encoder()
    key, value = encoder.catalog.encode(
        {"type": "catalog_item", "id": "MUG", "title": "Mug", "url": "https://s.io/mug"}
    )
    call = encoder.encode(
        {"type": "track", "messageId": "m-1", "timestamp": "2026-03-01T10:00:00Z",
         "userId": "u-1", "event": "Viewed", "properties": {"diagnosis": "phi"}}
    )  # fmt: skip
    product = Record(catalog, 0, 7, key, value, [("trace", b"t-7")])
    person = Record(calls, 0, 3, b"u-1", call, [("trace", b"t-3")])
    letters = build_dead_letters(
        settings, make_decoder(settings), transformer_from_settings(settings)
    )
    try:
        refused = CatalogResourceFailed("catalog item MUG: url is not a valid URL", 400)
        await letters.send(DeadLetter(product, refused, "deliver"))
        await letters.send(DeadLetter(person, MappingError("metric name too long"), "map"))
    finally:
        letters.close()
    written = read_topic(kafka_bootstrap, dlq, 2)
    by_topic = {dict(m.headers())["dlq.original.topic"].decode(): m for m in written}
    kept, redacted = by_topic[catalog], by_topic[calls]
    assert (kept.key(), kept.value()) == (key, value)
    assert ("trace", b"t-7") in kept.headers() and "dlq.redacted" not in dict(kept.headers())
    assert redacted.key() is None and dict(redacted.headers())["dlq.redacted"] == b"hipaa"
    assert b"phi" not in (redacted.value() or b"") and ("trace", b"t-3") not in redacted.headers()
