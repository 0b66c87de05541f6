"""Segment ecommerce v2 → Klaviyo's standard ecommerce metrics: one track call → event specs.

Klaviyo's flows, templates, predictive analytics and benchmarks look for its standard metric
names and property names (its guide "Integrate an ecommerce platform without a pre-built
integration"). With `ECOMMERCE_METRICS` on (the default), the route stage names the metric
(`STANDARD_METRICS`; an event definition's `metric` still wins) and `event_specs` adds
Klaviyo's property names beside the original properties (an original key is never replaced):

    Product Viewed    → Viewed Product    ProductName, ProductID, SKU, Categories, ImageURL,
                                          URL, Brand, Price
    Product Added     → Added to Cart     AddedItemProductName, …ProductID, …SKU, …Categories,
                                          …ImageURL, …URL, …Price, …Quantity (+ cart lines)
    Checkout Started  → Started Checkout  ItemNames, Categories, CheckoutURL, Items[]
    Order Completed   → Placed Order      OrderId, ItemNames, Categories, Brands, DiscountCode,
                                          DiscountValue, Items[]; plus one Ordered Product per
                                          `products[]` line
    Order Fulfilled / Cancelled / Refunded → Fulfilled / Cancelled / Refunded Order (as Placed)

Every derived event has its own `unique_id`, deterministic: `<messageId>:<line>` (the line's
index in `products`), so a replayed order is refused by Klaviyo line by line too (Segment's own
destination uses a random uuid there, which turns a replay into duplicates). A bad line (not an
object, no product named, a price or quantity that is not a number, more than Klaviyo accepts)
becomes an `EventSpec` carrying its `MappingError`: that line alone is dead-lettered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stream.core.calls import Call
from stream.core.errors import MappingError
from stream.klaviyo.mapping import event_attributes

STANDARD_METRICS: dict[str, str] = {
    "Product Viewed": "Viewed Product",
    "Product Added": "Added to Cart",
    "Checkout Started": "Started Checkout",
    "Order Completed": "Placed Order",
    "Order Fulfilled": "Fulfilled Order",
    "Order Cancelled": "Cancelled Order",
    "Order Refunded": "Refunded Order",
}
ORDERED_PRODUCT = "Ordered Product"
_ORDERS = frozenset({"Placed Order", "Fulfilled Order", "Cancelled Order", "Refunded Order"})


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event to send: its attributes, or for a bad order line the error instead.

    `line` is the index in `properties.products` of an Ordered Product event, None for the
    call's own event."""

    attributes: dict[str, Any] | None
    line: int | None = None
    error: MappingError | None = None


def line_unique_id(message_id: str, line: int) -> str:
    """The `unique_id` of the event derived from one order line (stable across replays)."""
    return f"{message_id}:{line}"


def event_specs(call: Call, metric_name: str | None, ecommerce: bool = True) -> list[EventSpec]:
    """The events one track (or page/screen) call becomes: its own first, then its lines.

    `metric_name` is the routed name (`Router.metric_name`). Raises `MappingError` when the
    call itself cannot be an event (bad time, metric, too many properties): the whole record
    fails. A bad order line only fails its own spec."""
    kind = STANDARD_METRICS.get(call.event or "") if ecommerce and call.type == "track" else None
    if kind is None:
        return [EventSpec(event_attributes(call, metric_name))]
    properties = call.properties
    raw_lines = properties.get("products")
    lines: list[tuple[int, dict[str, Any] | MappingError]] = (
        [(i, _check_line(i, raw)) for i, raw in enumerate(raw_lines)]
        if isinstance(raw_lines, list)
        else []
    )
    good = [line for _, line in lines if isinstance(line, dict)]
    added = _klaviyo_properties(kind, properties, good)
    shaped = {**added, **properties}  # the original properties win over a derived name
    specs = [EventSpec(event_attributes(call, metric_name, shaped))]
    if kind == "Placed Order":
        currency = properties.get("currency")
        order_id = properties.get("order_id")
        specs.extend(_line_spec(call, i, line, order_id, currency) for i, line in lines)
    return specs


# order lines ------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_line(index: int, raw: Any) -> dict[str, Any] | MappingError:
    where = f"properties.products[{index}]"
    if not isinstance(raw, dict):
        return MappingError(f"{where} is not an object (a product), got {type(raw).__name__}")
    for key in ("price", "quantity"):
        if raw.get(key) is not None and not _number(raw[key]):
            return MappingError(f"{where}.{key} is not a number: {type(raw[key]).__name__}")
    if not any(raw.get(k) not in (None, "") for k in ("product_id", "id", "sku", "name")):
        return MappingError(f"{where} names no product (product_id, sku or name)")
    return raw


def _line_spec(
    call: Call, index: int, line: dict[str, Any] | MappingError, order_id: Any, currency: Any
) -> EventSpec:
    if isinstance(line, MappingError):
        return EventSpec(None, index, line)
    derived: dict[str, Any] = {}
    _put(derived, "OrderId", order_id)
    _put(derived, "ProductID", _product_id(line))
    _put(derived, "SKU", line.get("sku"))
    _put(derived, "ProductName", line.get("name"))
    _put(derived, "Quantity", line.get("quantity"))
    _put(derived, "ProductURL", line.get("url"))
    _put(derived, "ImageURL", line.get("image_url"))
    _put(derived, "Categories", _categories(line))
    _put(derived, "ProductBrand", line.get("brand"))
    unique_id = line_unique_id(call.message_id, index)
    line_call = dataclasses.replace(call, message_id=unique_id, properties={**derived, **line})
    try:
        attributes = event_attributes(line_call, ORDERED_PRODUCT)
    except MappingError as exc:
        return EventSpec(None, index, MappingError(f"properties.products[{index}]: {exc}"))
    value = _row_total(line)
    if value is not None:
        attributes["value"] = value
        if isinstance(currency, str) and currency:
            attributes["value_currency"] = currency
    return EventSpec(attributes, index)


# Klaviyo's property names -----------------------------------------------------------------


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != "" and value != []:
        target[key] = value


def _product_id(product: dict[str, Any]) -> Any:
    value = product.get("product_id")
    return value if value not in (None, "") else product.get("id")


def _categories(product: dict[str, Any]) -> list[Any]:
    category = product.get("category")
    return [category] if isinstance(category, str) and category else []


def _row_total(product: dict[str, Any]) -> int | float | None:
    """price × quantity (quantity 1 when absent), exact in decimal: 9.99 × 3 = 29.97."""
    price, quantity = product.get("price"), product.get("quantity", 1)
    if not _number(price) or not _number(quantity):
        return None
    if isinstance(price, int) and isinstance(quantity, int):
        return price * quantity
    return float(Decimal(repr(price)) * Decimal(repr(quantity)))


def _item(product: dict[str, Any], order: bool) -> dict[str, Any]:
    """One entry of `Items`: cart/checkout style (ProductCategories) or order style
    (Categories, Brand), as Klaviyo's guide writes them."""
    item: dict[str, Any] = {}
    _put(item, "ProductID", _product_id(product))
    _put(item, "SKU", product.get("sku"))
    _put(item, "ProductName", product.get("name"))
    _put(item, "Quantity", product.get("quantity"))
    _put(item, "ItemPrice", product.get("price"))
    _put(item, "RowTotal", _row_total(product))
    _put(item, "ProductURL", product.get("url"))
    _put(item, "ImageURL", product.get("image_url"))
    if order:
        _put(item, "Categories", _categories(product))
        _put(item, "Brand", product.get("brand"))
    else:
        _put(item, "ProductCategories", _categories(product))
    return item


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _klaviyo_properties(
    kind: str, properties: dict[str, Any], lines: list[dict[str, Any]]
) -> dict[str, Any]:
    """Klaviyo's property names for one standard metric, from Segment's properties."""
    out: dict[str, Any] = {}
    if kind == "Viewed Product":
        _put(out, "ProductName", properties.get("name"))
        _put(out, "ProductID", _product_id(properties))
        _put(out, "SKU", properties.get("sku"))
        _put(out, "Categories", _categories(properties))
        _put(out, "ImageURL", properties.get("image_url"))
        _put(out, "URL", properties.get("url"))
        _put(out, "Brand", properties.get("brand"))
        _put(out, "Price", properties.get("price"))
        return out
    if kind == "Added to Cart":
        _put(out, "AddedItemProductName", properties.get("name"))
        _put(out, "AddedItemProductID", _product_id(properties))
        _put(out, "AddedItemSKU", properties.get("sku"))
        _put(out, "AddedItemCategories", _categories(properties))
        _put(out, "AddedItemImageURL", properties.get("image_url"))
        _put(out, "AddedItemURL", properties.get("url"))
        _put(out, "AddedItemPrice", properties.get("price"))
        _put(out, "AddedItemQuantity", properties.get("quantity"))
    order = kind in _ORDERS
    if order:
        _put(out, "OrderId", properties.get("order_id"))
        _put(out, "DiscountCode", properties.get("coupon"))
        _put(out, "DiscountValue", properties.get("discount"))
        _put(out, "Brands", _unique([p["brand"] for p in lines if p.get("brand")]))
    else:
        _put(out, "CheckoutURL", properties.get("checkout_url"))  # cart and checkout
    _put(out, "ItemNames", [p["name"] for p in lines if p.get("name") not in (None, "")])
    if kind != "Added to Cart":
        _put(out, "Categories", _unique([c for p in lines for c in _categories(p)]))
    _put(out, "Items", [_item(p, order) for p in lines])
    return out
