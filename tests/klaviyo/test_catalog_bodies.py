"""Catalog bodies as Klaviyo's OpenAPI slices define them, and the governor's catalog budgets
as the slices' `x-klaviyo-ratelimit` say."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from stream.klaviyo import catalog
from stream.klaviyo.governor import KLAVIYO_LIMITS
from stream.local.sandbox.config import OPENAPI_DIR
from stream.local.sandbox.spec import load_operations

OPERATIONS = load_operations(OPENAPI_DIR)
ITEM = {"title": "Mug", "description": "", "url": "https://s.io/mug", "price": None,
        "image_full_url": None, "image_thumbnail_url": None, "images": [],
        "published": True, "custom_metadata": {"size": "L"}}  # fmt: skip
VARIANT = {"sku": "MUG-L", "title": "Mug L", "description": "", "url": "https://s.io/mug?l",
           "price": 9.5, "inventory_quantity": 0.0, "inventory_policy": 1,
           "image_full_url": None, "image_thumbnail_url": None, "images": [],
           "published": True, "custom_metadata": {}}  # fmt: skip
FIELDS = {"item": ITEM, "variant": VARIANT, "category": {"name": "Mugs"}}
PLURAL = {"item": "catalog_items", "variant": "catalog_variants", "category": "catalog_categories"}


def validator(operation: str) -> Draft202012Validator:
    found = OPERATIONS[operation].validator
    assert found is not None
    return found


@pytest.mark.parametrize("kind", catalog.KINDS)
@pytest.mark.parametrize("action", catalog.ACTIONS)
def test_every_job_body_is_valid_for_its_operation(
    kind: catalog.Kind, action: catalog.Action
) -> None:
    entry = catalog.entry(kind, action, "SKU-1", FIELDS[kind], item_id="MUG",
                          categories=("C1",) if kind == "item" else ())  # fmt: skip
    body = catalog.job_body(kind, action, [entry])
    errors = [e.message for e in validator(f"bulk_{action}_{PLURAL[kind]}").iter_errors(body)]
    assert not errors, errors
    if action == "create":
        assert entry["attributes"]["external_id"] == "SKU-1"
        assert None not in entry["attributes"].values(), "a create leaves Klaviyo's defaults"
    elif action == "update":
        assert entry["id"] == "$custom:::$default:::SKU-1"
        if kind == "item":
            assert entry["attributes"]["price"] is None, "an update clears what the row lacks"


def test_an_item_update_without_categories_clears_them_and_a_create_sends_none() -> None:
    update = catalog.entry("item", "update", "A", ITEM)
    assert update["relationships"] == {"categories": {"data": []}}
    assert "relationships" not in catalog.entry("item", "create", "A", ITEM)


def test_back_in_stock_and_mapped_metric_bodies_are_valid() -> None:
    body = catalog.back_in_stock_body({"email": "a@x.io"}, "MUG-L", ("EMAIL",))
    assert not list(validator("create_back_in_stock_subscription").iter_errors(body))
    patch = catalog.mapped_metric_body("revenue", "AbC123")
    assert not list(validator("update_mapped_metric").iter_errors(patch))


def test_the_governor_paces_every_catalog_endpoint_at_its_documented_limit() -> None:
    checked = 0
    for op in OPERATIONS.values():
        if not ("catalog" in op.path or "stock" in op.path or "metric" in op.path):
            continue
        limit = KLAVIYO_LIMITS[op.path]
        assert (limit.burst, limit.steady) == (op.rate_limit.burst, op.rate_limit.steady), op
        checked += 1
    assert checked == 26
