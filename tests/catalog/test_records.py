"""Catalog records in: every format a product topic may hold, and what is refused, with why."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import given
from hypothesis import strategies as st

from stream.catalog.decode import CatalogDecoder
from stream.catalog.records import Resource, parse, tombstone
from stream.core.calls import Record
from stream.core.errors import DecodeError, MappingError, RecordError
from stream.ops.produce_catalog import CatalogEncoder

ITEM = {"type": "catalog_item", "id": "MUG", "title": "Mug", "url": "https://s.io/mug",
        "price": 9.5, "categories": ["C1", "C1", "C2"],
        "custom_metadata": {"glaze": "blue"}}  # fmt: skip
VARIANT = {"type": "catalog_variant", "id": "MUG-L", "item_id": "MUG", "sku": "MUG-L",
           "title": "Mug L", "url": "https://s.io/mug?l", "price": 9.5,
           "inventory_quantity": 0}  # fmt: skip


def record(value: bytes | None, key: bytes | None = None, topic: str = "products") -> Record:
    return Record(topic, 0, 1, key, value)


def test_a_whole_row_becomes_every_field_of_its_kind_with_defaults() -> None:
    item = parse(ITEM)
    assert item.key == "item:MUG" and item.categories == ("C1", "C2")
    assert item.fields is not None and item.fields["description"] == ""
    assert item.fields["published"] is True and item.fields["image_full_url"] is None
    variant = parse(VARIANT)
    assert variant.item_id == "MUG" and variant.fields is not None
    assert variant.fields["inventory_policy"] == 0 and variant.fields["inventory_quantity"] == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"title": None}, "title is required"),
        ({"price": "cheap"}, "price must be a number"),
        ({"price": True}, "price must be a number"),
        ({"custom_metadata": "[1]"}, "custom_metadata must be a JSON object"),
        ({"custom_metadata": {"x": "y" * 110_000}}, "larger than Klaviyo's 100 KB"),
        ({"id": ""}, "id must be a non-empty string"),
        ({"categories": "C1"}, "categories must be a list"),
    ],
)
def test_what_klaviyo_would_refuse_is_a_dead_letter_that_says_why(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(MappingError, match=reason):
        parse({**ITEM, **change})


def test_a_variants_inventory_policy_is_zero_one_or_two() -> None:
    with pytest.raises(MappingError, match="inventory_policy must be 0, 1 or 2"):
        parse({**VARIANT, "inventory_policy": 3})


def test_a_tombstone_deletes_what_its_key_names() -> None:
    assert tombstone(b"variant:MUG-L") == Resource("variant", "MUG-L", None)
    for key in (None, b"MUG", b"product:MUG", b"item:"):
        with pytest.raises(DecodeError, match="item:<id>, variant:<id> or category:<id>"):
            tombstone(key)


def test_avro_json_and_confluent_records_decode_alike() -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://catalog"})
    lines = [ITEM, VARIANT, {"type": "catalog_category", "id": "C1", "name": "Mugs"}]
    for encoder, decoder in (
        (CatalogEncoder(), CatalogDecoder()),
        (CatalogEncoder(registry, "products"), CatalogDecoder(registry)),
    ):
        for line in lines:
            key, value = encoder.encode(line)
            decoded = decoder.decode(record(value, key))
            assert decoded == parse(line), line
            assert decoded == decoder.decode(record(orjson.dumps(line), key)), "JSON alike"
    key, value = CatalogEncoder().encode({"type": "catalog_item", "id": "MUG", "deleted": True})
    assert value is None and CatalogDecoder().decode(record(value, key)).deleted


def test_unreadable_records_say_why() -> None:
    decoder = CatalogDecoder()
    cases = {
        b"\xc3\x01" + bytes(8) + b"x": "unknown catalog schema fingerprint",
        b"\x00\x00\x00\x00\x01x": "SCHEMA_REGISTRY_URL is not set",
        b"not json": "neither Avro",
        b"[1, 2]": "a catalog record is a JSON object",
        orjson.dumps({"type": "track", "id": "x"}): "not a catalog record",
        orjson.dumps({"op": "c", "after": {}}): "CATALOG_MAPPING_FILE does not map",
    }
    for value, reason in cases.items():
        with pytest.raises(DecodeError, match=reason):
            decoder.decode(record(value))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),  # fmt: skip
    max_leaves=8,
)
fields = st.sampled_from(["type", "id", "title", "url", "price", "sku", "item_id", "name",
                          "images", "categories", "published", "custom_metadata",
                          "inventory_quantity", "inventory_policy", "deleted"])  # fmt: skip
types = st.sampled_from(["catalog_item", "catalog_variant", "catalog_category", "x"])


@given(st.dictionaries(fields, json_values, max_size=10), types)
def test_any_json_object_is_a_resource_or_a_dead_letter_never_a_crash(
    value: dict[str, Any], kind: str
) -> None:
    try:
        found = CatalogDecoder().decode(record(orjson.dumps({**value, "type": kind})))
    except RecordError:
        return
    assert isinstance(found, Resource) and found.id
