"""The catalog page (GET /sandbox/catalog in a browser): items, variants, categories, jobs, back
in stock and mapped metrics, rendered from the same document the JSON answer carries."""

from __future__ import annotations

from typing import Any

from .pages import Html, code, heading, page, para, profile_link, table

SHOWN = 500  # rows per table; the JSON answer has them all


def _short(resource_id: str | None) -> str | None:
    """`$custom:::$default:::SKU-1` → `SKU-1`."""
    return resource_id.rsplit(":::", 1)[-1] if resource_id else resource_id


def catalog_page(document: dict[str, Any]) -> str:
    """What the account's catalog holds now."""
    items = table(
        ["id", "title", "price", "published", "categories", "url", "updated"],
        [
            [_short(i["id"]), i.get("title"), i.get("price"), i.get("published")]
            + [", ".join(_short(c) or "" for c in i["categories"]) or None]
            + [i.get("url"), i["updated"]]
            for i in document["items"][:SHOWN]
        ],
        "no items",
    )
    variants = table(
        ["id", "item", "sku", "title", "price", "inventory", "policy", "updated"],
        [
            [_short(v["id"]), _short(v["item"]), v.get("sku"), v.get("title"), v.get("price")]
            + [v.get("inventory_quantity"), v.get("inventory_policy"), v["updated"]]
            for v in document["variants"][:SHOWN]
        ],
        "no variants",
    )
    categories = table(
        ["id", "name", "updated"],
        [[_short(c["id"]), c.get("name"), c["updated"]] for c in document["categories"][:SHOWN]],
        "no categories",
    )
    stock = table(
        ["requested", "profile", "variant", "channels"],
        [
            [s["created"], profile_link(s["profile_id"]), _short(s["variant"])]
            + [", ".join(s["channels"])]
            for s in document["back_in_stock"][:SHOWN]
        ],
        "no back-in-stock subscriptions",
    )
    summary = para(
        f"{len(document['items'])} items, {len(document['variants'])} variants, "
        f"{len(document['categories'])} categories; jobs by status ",
        Html(code(document["jobs"])),
        f" {document['in_progress']} in progress now (at most {document['most_in_progress']} "
        f"at once; {document['refused_over_cap']} refused over the cap).",
    )
    mapped = table(
        ["mapped metric", "metric id"], sorted(document["mapped_metrics"].items()), "none"
    )
    return page(
        "Catalog",
        "/sandbox/catalog",
        summary,
        heading("Items"),
        items,
        heading("Variants"),
        variants,
        heading("Categories"),
        categories,
        heading("Back in stock"),
        stock,
        heading("Mapped metrics"),
        mapped,
    )
