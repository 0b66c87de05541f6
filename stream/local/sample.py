"""Realistic sample calls in Segment's JSON format, for `produce --sample N` and the demo.

Deterministic for a seed: persons identify themselves (userId, email, name, phone, title) and
then browse, add to cart and order (an "Ordered Product" with a `products` array, revenue and
booleans), so every mapping path is exercised.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Ken", "Margaret", "Linus", "Radia"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Thompson", "Hamilton"]
TITLES = ["Engineer", "Buyer", "Director", "Analyst", "Founder"]
PRODUCTS = [
    ("SKU-1001", "Winnie the Pooh", 9.99),
    ("SKU-1002", "The Hobbit", 14.5),
    ("SKU-1003", "Dune", 11.0),
    ("SKU-1004", "Neuromancer", 8.25),
]


def _person(rng: random.Random, index: int) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "userId": f"user-{index}",
        "anonymousId": str(uuid.UUID(int=rng.getrandbits(128))),
        "traits": {
            "email": f"{first}.{last}.{index}@example.com".lower(),
            "firstName": first,
            "lastName": last,
            "phone": f"+1415555{index % 10000:04d}" if index % 3 == 0 else None,
            "title": rng.choice(TITLES),
            "plan": rng.choice(["free", "pro", "enterprise"]),
            "newsletter": rng.random() < 0.5,
        },
    }


def sample_calls(count: int, seed: int = 7, persons: int | None = None) -> Iterator[dict[str, Any]]:
    """`count` calls: each person's identify first, then their tracks and pages."""
    rng = random.Random(seed)
    people = [_person(rng, i) for i in range(persons or max(count // 10, 1))]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    identified: set[int] = set()
    for n in range(count):
        idx = rng.randrange(len(people))
        person = people[idx]
        when = (start + timedelta(seconds=n)).isoformat()
        base = {
            "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
            "timestamp": when,
            "userId": person["userId"],
            "anonymousId": person["anonymousId"],
        }
        if idx not in identified:
            identified.add(idx)
            traits = {k: v for k, v in person["traits"].items() if v is not None}
            yield {"type": "identify", **base, "traits": traits}
            continue
        roll = rng.random()
        if roll < 0.1:
            yield {
                "type": "page",
                **base,
                "name": "Home",
                "properties": {"url": "https://shop.example.com/", "path": "/"},
            }
            continue
        sku, name, price = rng.choice(PRODUCTS)
        if roll < 0.6:
            yield {
                "type": "track",
                **base,
                "event": "Viewed Product",
                "properties": {"sku": sku, "name": name, "price": price},
            }
        else:
            quantity = rng.randint(1, 3)
            yield {
                "type": "track",
                **base,
                "event": "Ordered Product",
                "properties": {
                    "revenue": round(price * quantity, 2),
                    "currency": "USD",
                    "gift": rng.random() < 0.2,
                    "products": [{"sku": sku, "name": name, "price": price, "quantity": quantity}],
                },
            }
