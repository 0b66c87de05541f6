"""`produce --input` with catalog lines: keyed `<kind>:<id>`, a deletion as a tombstone, a line
the catalog stage would refuse reported by its number, calls beside them unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from stream.catalog.decode import CatalogDecoder
from stream.core.calls import Record
from stream.ops.produce import Encoder, publish_file
from tests.support import read_topic

LINES: list[dict[str, Any]] = [
    {"type": "catalog_item", "id": "MUG", "title": "Mug", "url": "https://s.io/mug"},  # 1
    {"type": "catalog_variant", "id": "MUG-L", "item_id": "MUG", "sku": "MUG-L",
     "title": "Mug L", "url": "https://s.io/mug?l", "price": 9.5,
     "inventory_quantity": 3, "custom_metadata": {"glaze": "blue"}},  # 2
    {"type": "catalog_item", "id": "CUP", "title": "Cup"},  # 3: no url
    {"type": "catalog_item", "id": "OLD", "deleted": True},  # 4: the tombstone
    {"type": "track", "messageId": "m-5", "timestamp": "2026-03-01T10:00:00Z",
     "userId": "u", "event": "Viewed"},  # 5: a call, as ever
]  # fmt: skip


def test_catalog_lines_are_keyed_records_and_deletions_tombstones(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in LINES))
    report = publish_file({"bootstrap.servers": kafka_bootstrap}, topic, path, Encoder())
    assert report.published == 4 and report.catalog == 3
    assert report.refused == [(3, "catalog item CUP: url is required")]
    records = read_topic(kafka_bootstrap, topic, 4)
    assert [m.key() for m in records] == [b"item:MUG", b"variant:MUG-L", b"item:OLD", b"u"]
    decoder = CatalogDecoder()
    found = [decoder.decode(Record(topic, 0, m.offset(), m.key(), m.value())) for m in records[:3]]
    assert found[1].fields is not None and found[1].fields["custom_metadata"] == {"glaze": "blue"}
    assert records[2].value() is None and found[2].deleted
