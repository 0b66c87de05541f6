"""Segment ecommerce v2 → Klaviyo's standard metrics: names, derived line events, bad lines."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from stream.core.calls import Call, normalize
from stream.core.errors import MappingError
from stream.klaviyo import mapping
from stream.klaviyo.commerce import EventSpec, event_specs, line_unique_id
from stream.local.sandbox.config import OPENAPI_DIR
from stream.local.sandbox.spec import load_operations
from stream.rules.route import Router

PROFILE = {"email": "ann@example.com"}


def track(event: str, properties: dict[str, Any], message_id: str = "m-1") -> Call:
    return normalize(
        "track",
        {
            "messageId": message_id,
            "timestamp": "2026-03-01T10:00:00Z",
            "userId": "u-1",
            "event": event,
            "properties": properties,
        },
    )


def specs(call: Call, ecommerce: bool = True) -> list[EventSpec]:
    """What the pipeline will do: route names the metric, commerce shapes the events."""
    return event_specs(call, Router(ecommerce_metrics=ecommerce).metric_name(call), ecommerce)


def metric(attributes: dict[str, Any] | None) -> str:
    assert attributes is not None
    return str(attributes["metric"]["data"]["attributes"]["name"])


def longest_string(value: Any) -> int:
    """Length of the longest string anywhere in a JSON value."""
    if isinstance(value, str):
        return len(value)
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        return max((longest_string(v) for v in children), default=0)
    return 0


@cache
def bulk_validator() -> Draft202012Validator:
    validator = load_operations(OPENAPI_DIR)["bulk_create_events"].validator
    assert validator is not None
    return validator


BOOK = {
    "product_id": "507f1f77",
    "sku": "G-32",
    "category": "Books",
    "name": "Winnie the Pooh",
    "brand": "Kids Books",
    "variant": "hardcover",
    "price": 9.99,
    "quantity": 3,
    "url": "https://shop.example.com/p/winnie",
    "image_url": "https://shop.example.com/p/winnie.png",
}
GAME = {"product_id": "505bd76", "sku": "G-1", "category": "Games", "name": "Monopoly",
        "brand": "Hasbro", "price": 19.0, "quantity": 1}  # fmt: skip
ORDER = {
    "order_id": "50314b8e",
    "total": 30.0,
    "revenue": 25.0,
    "shipping": 3,
    "discount": 2.5,
    "coupon": "hasbros",
    "currency": "USD",
    "products": [BOOK, GAME],
}


def test_product_viewed_is_viewed_product_with_klaviyos_names_beside_the_originals() -> None:
    [spec] = specs(track("Product Viewed", BOOK))
    assert spec.line is None and spec.error is None and spec.attributes is not None
    assert metric(spec.attributes) == "Viewed Product"
    assert spec.attributes["properties"] == {
        **BOOK,
        "ProductName": "Winnie the Pooh",
        "ProductID": "507f1f77",
        "SKU": "G-32",
        "Categories": ["Books"],
        "ImageURL": "https://shop.example.com/p/winnie.png",
        "URL": "https://shop.example.com/p/winnie",
        "Brand": "Kids Books",
        "Price": 9.99,
    }


def test_product_added_is_added_to_cart() -> None:
    [spec] = specs(track("Product Added", {**BOOK, "cart_id": "c-1", "quantity": 1}))
    assert spec.attributes is not None and metric(spec.attributes) == "Added to Cart"
    added = {k: v for k, v in spec.attributes["properties"].items() if k.startswith("AddedItem")}
    assert added == {
        "AddedItemProductName": "Winnie the Pooh",
        "AddedItemProductID": "507f1f77",
        "AddedItemSKU": "G-32",
        "AddedItemCategories": ["Books"],
        "AddedItemImageURL": "https://shop.example.com/p/winnie.png",
        "AddedItemURL": "https://shop.example.com/p/winnie",
        "AddedItemPrice": 9.99,
        "AddedItemQuantity": 1,
    }
    assert "Items" not in spec.attributes["properties"]  # no cart lines sent: none invented


def test_checkout_started_lists_the_cart_as_klaviyos_items() -> None:
    properties = {"checkout_url": "https://shop.example.com/c/1", "value": 48.97,
                  "products": [BOOK, GAME]}  # fmt: skip
    [spec] = specs(track("Checkout Started", properties))
    assert spec.attributes is not None and metric(spec.attributes) == "Started Checkout"
    shaped = spec.attributes["properties"]
    assert shaped["CheckoutURL"] == "https://shop.example.com/c/1"
    assert shaped["ItemNames"] == ["Winnie the Pooh", "Monopoly"]
    assert shaped["Categories"] == ["Books", "Games"]
    assert shaped["Items"][0] == {
        "ProductID": "507f1f77",
        "SKU": "G-32",
        "ProductName": "Winnie the Pooh",
        "Quantity": 3,
        "ItemPrice": 9.99,
        "RowTotal": 29.97,  # exact in decimal, not 29.970000000000002
        "ProductURL": "https://shop.example.com/p/winnie",
        "ImageURL": "https://shop.example.com/p/winnie.png",
        "ProductCategories": ["Books"],
    }
    assert spec.attributes["value"] == 48.97


def test_order_completed_is_placed_order_plus_one_ordered_product_per_line() -> None:
    main, first, second = specs(track("Order Completed", ORDER, message_id="msg-9"))
    assert main.attributes is not None and metric(main.attributes) == "Placed Order"
    shaped = main.attributes["properties"]
    assert {k: shaped[k] for k in ORDER} == ORDER  # every original property kept as sent
    assert shaped["OrderId"] == "50314b8e"
    assert shaped["ItemNames"] == ["Winnie the Pooh", "Monopoly"]
    assert shaped["Categories"] == ["Books", "Games"]
    assert shaped["Brands"] == ["Kids Books", "Hasbro"]
    assert (shaped["DiscountCode"], shaped["DiscountValue"]) == ("hasbros", 2.5)
    assert shaped["Items"][1] == {"ProductID": "505bd76", "SKU": "G-1", "ProductName": "Monopoly",
                                  "Quantity": 1, "ItemPrice": 19.0, "RowTotal": 19.0,
                                  "Categories": ["Games"], "Brand": "Hasbro"}  # fmt: skip
    # Segment's precedence: revenue, then total, then value
    assert (main.attributes["value"], main.attributes["value_currency"]) == (25.0, "USD")
    assert main.attributes["unique_id"] == "msg-9"

    assert (first.line, second.line) == (0, 1)
    assert first.attributes is not None and second.attributes is not None
    assert {metric(first.attributes), metric(second.attributes)} == {"Ordered Product"}
    assert first.attributes["unique_id"] == "msg-9:0"
    assert second.attributes["unique_id"] == "msg-9:1"
    assert first.attributes["time"] == main.attributes["time"]
    assert (first.attributes["value"], first.attributes["value_currency"]) == (29.97, "USD")
    assert first.attributes["properties"] == {
        **BOOK,
        "OrderId": "50314b8e",
        "ProductID": "507f1f77",
        "SKU": "G-32",
        "ProductName": "Winnie the Pooh",
        "Quantity": 3,
        "ProductURL": "https://shop.example.com/p/winnie",
        "ImageURL": "https://shop.example.com/p/winnie.png",
        "Categories": ["Books"],
        "ProductBrand": "Kids Books",
    }


@pytest.mark.parametrize(
    ("event", "klaviyo"),
    [("Order Fulfilled", "Fulfilled Order"), ("Order Cancelled", "Cancelled Order"),
     ("Order Refunded", "Refunded Order")],
)  # fmt: skip
def test_later_order_events_carry_the_order_but_derive_no_line_events(
    event: str, klaviyo: str
) -> None:
    [spec] = specs(track(event, ORDER))
    assert spec.attributes is not None and metric(spec.attributes) == klaviyo
    assert spec.attributes["properties"]["OrderId"] == "50314b8e"
    assert len(spec.attributes["properties"]["Items"]) == 2


def test_with_the_setting_off_names_and_properties_stay_as_sent() -> None:
    [spec] = specs(track("Order Completed", ORDER), ecommerce=False)
    assert spec.attributes is not None and metric(spec.attributes) == "Order Completed"
    assert spec.attributes["properties"] == ORDER


def test_a_definitions_metric_keeps_the_shape_and_the_lines() -> None:
    main, *lines = event_specs(track("Order Completed", ORDER), "Order Paid", True)
    assert main.attributes is not None and metric(main.attributes) == "Order Paid"
    assert "Items" in main.attributes["properties"]
    assert [metric(s.attributes) for s in lines] == ["Ordered Product", "Ordered Product"]


def test_other_events_are_one_event_as_before() -> None:
    call = track("Signed Up", {"plan": "pro", "products": [BOOK]})
    assert specs(call) == [EventSpec(mapping.event_attributes(call, "Signed Up"))]


def test_a_property_the_sender_already_named_the_klaviyo_way_is_not_replaced() -> None:
    [main, _] = specs(track("Order Completed", {"ItemNames": ["mine"], "products": [GAME]}))
    assert main.attributes is not None
    assert main.attributes["properties"]["ItemNames"] == ["mine"]


def test_products_that_are_not_a_list_give_the_order_event_alone() -> None:
    [main] = specs(track("Order Completed", {"order_id": "o", "products": {"sku": "x"}}))
    assert main.attributes is not None and "Items" not in main.attributes["properties"]


def test_bad_lines_fail_alone_and_say_which_line_and_why() -> None:
    products = [
        BOOK,
        "G-2",
        {"sku": "G-3", "price": "9.99"},
        {"quantity": 2},
        {"sku": "G-5", "quantity": True},
        {"sku": "G-6", **{f"p{i}": i for i in range(400)}},
        GAME,
    ]
    main, *lines = specs(track("Order Completed", {"order_id": "o", "products": products}))
    assert [s.line for s in lines] == list(range(7))
    errors = {s.line: str(s.error) for s in lines if s.error is not None}
    assert sorted(errors) == [1, 2, 3, 4, 5]
    assert all(s.attributes is None for s in lines if s.error is not None)
    assert "products[1] is not an object" in errors[1]
    assert "products[2].price is not a number" in errors[2]
    assert "products[3] names no product" in errors[3]
    assert "products[4].quantity is not a number" in errors[4]
    assert "products[5]" in errors[5] and "Klaviyo allows 400" in errors[5]
    assert lines[0].attributes is not None and lines[6].attributes is not None
    assert main.attributes is not None
    # the order event lists the lines that can be read, and keeps the original array
    assert main.attributes["properties"]["ItemNames"] == ["Winnie the Pooh", "Monopoly"]
    assert [i.get("SKU") for i in main.attributes["properties"]["Items"]] == ["G-32", "G-6", "G-1"]
    assert main.attributes["properties"]["products"] == products


def test_a_call_that_cannot_be_an_event_fails_as_a_whole() -> None:
    call = normalize("track", {"messageId": "m", "timestamp": "1970-01-01T00:00:00Z",
                               "userId": "u", "event": "Order Completed",
                               "properties": ORDER})  # fmt: skip
    with pytest.raises(MappingError, match="before 1990"):
        specs(call)


def test_an_order_of_300_lines_fits_klaviyos_limits_in_one_valid_bulk_request() -> None:
    products = [
        {**BOOK, "product_id": f"p-{i}", "sku": f"SKU-{i:05d}", "name": f"Book number {i}",
         "description": "A story about a bear and his friends. " * 5}
        for i in range(300)
    ]  # fmt: skip
    all_specs = specs(track("Order Completed", {**ORDER, "products": products}))
    assert len(all_specs) == 301 and all(s.error is None for s in all_specs)
    events = [s.attributes for s in all_specs if s.attributes is not None]
    assert len({e["unique_id"] for e in events}) == 301
    assert len(events) <= 1000  # Klaviyo's events per bulk request
    for event in events:
        assert len(event["properties"]) <= 400
    body = mapping.bulk_events_body([(PROFILE, events)])
    assert len(orjson.dumps(body)) < 5_000_000  # Klaviyo's request limit
    assert longest_string(body) < 100_000  # Klaviyo's limit per string
    errors = list(bulk_validator().iter_errors(body))
    assert not errors, errors[0].message


# properties that must hold for every order ------------------------------------------------

names = st.text(min_size=1, max_size=12)
good_line = st.fixed_dictionaries(
    {"sku": names},
    optional={"price": st.floats(0, 1e6, allow_nan=False), "quantity": st.integers(0, 1000),
              "name": names, "category": names, "brand": names},
)  # fmt: skip
bad_line = st.one_of(
    st.integers(),
    st.text(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.fixed_dictionaries({"sku": names, "price": st.text()}),
    st.fixed_dictionaries({"quantity": st.integers()}),
)
lines = st.lists(st.one_of(good_line, bad_line), max_size=40)
message_ids = st.text(min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(message_id=message_ids, products=lines)
def test_line_ids_are_deterministic_unique_and_only_bad_lines_fail(
    message_id: str, products: list[Any]
) -> None:
    call = track("Order Completed", {"order_id": "o-1", "products": products}, message_id)
    first, again = specs(call), specs(call)
    # a replay of the same record gives the same events, with the same ids
    assert [(s.attributes, s.line, str(s.error)) for s in first] == [
        (s.attributes, s.line, str(s.error)) for s in again
    ]
    main, *derived = first
    assert main.line is None and main.attributes is not None
    assert [s.line for s in derived] == list(range(len(products)))
    ids = [main.attributes["unique_id"]] + [
        s.attributes["unique_id"] for s in derived if s.attributes is not None
    ]
    assert len(ids) == len(set(ids))
    for spec, product in zip(derived, products, strict=True):
        good = isinstance(product, dict) and "sku" in product and isinstance(
            product.get("price", 0.0), float | int
        )  # fmt: skip
        assert (spec.error is None) is good, (product, spec.error)
        assert (spec.attributes is None) is not good


@settings(max_examples=300, deadline=None)
@given(a=message_ids, b=message_ids, i=st.integers(0, 5000), j=st.integers(0, 5000))
def test_no_two_lines_of_any_two_records_share_an_id(a: str, b: str, i: int, j: int) -> None:
    if (a, i) != (b, j):
        assert line_unique_id(a, i) != line_unique_id(b, j)
