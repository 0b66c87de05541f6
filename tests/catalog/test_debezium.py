"""Debezium change events through the column mapping: each op, Debezium's encodings, and a
mapping file that names what a catalog resource cannot hold is refused at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.catalog.debezium import load_mapping
from stream.catalog.decode import CatalogDecoder
from stream.catalog.records import Resource
from stream.core.calls import Record
from stream.core.errors import CatalogConfigError, DecodeError, MappingError

MAPPING = """
topics:
  shop.public.variants:
    kind: variant
    id: variant_id
    fields:
      item_id: product_id
      sku: sku
      title: title
      url: "https://shop.example/v/{sku}"
      price: price
      inventory_quantity: stock
"""
ROW = {"variant_id": 5, "product_id": 7, "sku": "MUG-L", "title": "Mug L", "price": "9.50",
       "stock": 0}  # fmt: skip


@pytest.fixture
def decoder(tmp_path: Path) -> CatalogDecoder:
    path = tmp_path / "mapping.yaml"
    path.write_text(MAPPING)
    return CatalogDecoder(mapping=load_mapping(str(path)))


def event(op: str, before: Any = None, after: Any = None, key: Any = None) -> Record:
    value = orjson.dumps({"before": before, "after": after, "op": op})
    return Record("shop.public.variants", 0, 1, orjson.dumps(key or {"variant_id": 5}), value)


def test_each_op_becomes_a_version_or_a_deletion(decoder: CatalogDecoder) -> None:
    for op in ("r", "c", "u"):
        found = decoder.decode(event(op, after=ROW))
        assert found.key == "variant:5" and found.item_id == "7" and found.fields is not None
        assert found.fields["price"] == 9.5
        assert found.fields["url"] == "https://shop.example/v/MUG-L"
    assert decoder.decode(event("d", before=ROW)) == Resource("variant", "5", None)
    tombstone = Record("shop.public.variants", 0, 2, b'{"payload": {"variant_id": 5}}', None)
    assert decoder.decode(tombstone) == Resource("variant", "5", None)


def test_debeziums_encodings_that_cannot_be_read_say_how_to_fix_them(
    decoder: CatalogDecoder,
) -> None:
    with pytest.raises(DecodeError, match="not c, u, r or d"):
        decoder.decode(event("t", after=ROW))
    with pytest.raises(MappingError, match="id column 'variant_id' is null"):
        decoder.decode(event("c", after={**ROW, "variant_id": None}))
    with pytest.raises(MappingError, match="decimal.handling.mode to double or string"):
        decoder.decode(event("c", after={**ROW, "price": "A7Y="}))  # precise: base64 bytes
    with pytest.raises(MappingError, match="price is required"):
        decoder.decode(event("c", after={**ROW, "price": None}))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("topics: {t: {kind: product, id: x}}", "kind must be item, variant or category"),
        ("topics: {t: {kind: item, fields: {title: name}}}", "id must name the id column"),
        ("topics: {t: {kind: item, id: x, fields: {colour: c}}}", "unknown field.*colour"),
        ("nothing: here", "expected `topics:`"),
    ],
)
def test_a_mapping_that_cannot_work_is_refused_at_start(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    with pytest.raises(CatalogConfigError, match=reason):
        load_mapping(str(path))


def test_an_avro_change_event_through_the_registry(tmp_path: Path) -> None:
    """Debezium's Avro converter: the envelope's schema from the Schema Registry."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from fastavro import parse_schema

    from stream.intake.avro import encode_confluent

    row = {"type": "record", "name": "Value", "fields": [
        {"name": "variant_id", "type": "long"}, {"name": "product_id", "type": "long"},
        {"name": "sku", "type": "string"}, {"name": "title", "type": "string"},
        {"name": "price", "type": "double"}, {"name": "stock", "type": "int"}]}
    envelope = {"type": "record", "name": "Envelope", "namespace": "shop.public.variants",
                "fields": [{"name": "before", "type": ["null", row], "default": None},
                           {"name": "after", "type": ["null", "Value"], "default": None},
                           {"name": "op", "type": "string"}]}  # fmt: skip
    registry = SchemaRegistryClient.new_client({"url": "mock://debezium"})
    raw = Schema(orjson.dumps(envelope).decode(), "AVRO")
    schema_id = registry.register_schema("shop.public.variants-value", raw)
    after = {"variant_id": 5, "product_id": 7, "sku": "MUG-L", "title": "Mug L", "price": 9.5,
             "stock": 2}  # fmt: skip
    value = encode_confluent(schema_id, parse_schema(envelope),
                             {"before": None, "after": after, "op": "c"})  # fmt: skip
    path = tmp_path / "mapping.yaml"
    path.write_text(MAPPING)
    decoder = CatalogDecoder(registry, load_mapping(str(path)))
    found = decoder.decode(Record("shop.public.variants", 0, 1, None, value))
    assert found.key == "variant:5" and found.fields is not None
    assert found.fields["inventory_quantity"] == 2 and found.item_id == "7"
