"""The demo's traffic (`run --local --sample N`, hence `scripts/demo`): a small shop's day, so
each page of the sandbox shows a newcomer one thing the product does.

Shoppers identify themselves, some subscribing to the newsletter (email consent and the
Newsletter list), some to SMS; they browse, add to cart, check out and order with Segment's
ecommerce events (an Order Completed becomes a Placed Order plus one Ordered Product per line);
big orders put their buyer on the VIP list; a few people opt out again. Two stories need Klaviyo
to hold something first, so they are published `later`, once it does: a person who signed up
for the newsletter on the web and, apart from that, uses the app (two profiles at Klaviyo)
logs in with both, and the service merges the two; and a shopper asks to be forgotten (a
`delete` call).

`stream.local.sample` stays the plain traffic the tests and benchmarks count on; this module
is the demo's alone. Deterministic for a seed and a start time.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from stream.local.sample import FIRST, LAST, TITLES
from stream.local.sandbox.config import SeedList

NEWSLETTER = SeedList("NEWS01", "Newsletter")
VIP = SeedList("VIP001", "VIP customers")
LISTS = (NEWSLETTER, VIP)  # the demo sandbox's account has these from the start
VIP_ORDER = 40.0  # an order at least this big puts its buyer on the VIP list

START = datetime(2026, 1, 1, tzinfo=UTC)
SHOP = "https://shop.example.com"
PRODUCTS = [  # product_id, name, price, category, brand
    ("P-1001", "Winnie the Pooh", 9.99, "Children", "Methuen"),
    ("P-1002", "The Hobbit", 14.5, "Fantasy", "Allen & Unwin"),
    ("P-1003", "Dune", 11.0, "Science Fiction", "Chilton"),
    ("P-1004", "Neuromancer", 8.25, "Science Fiction", "Ace"),
    ("P-1005", "The Art of Computer Programming", 59.0, "Computing", "Addison-Wesley"),
]
SPLIT_EMAIL = "grace.signup@example.com"  # the newsletter signup on the web ...
SPLIT_USER = "app-grace"  # ... and the app account of the same person


@dataclass(frozen=True)
class Demo:
    """The calls to publish at once (`first`) and once Klaviyo holds the two halves of the
    split person (`later`)."""

    first: list[dict[str, Any]]
    later: list[dict[str, Any]]
    split: tuple[str, str] = (SPLIT_EMAIL, SPLIT_USER)

    @property
    def count(self) -> int:
        return len(self.first) + len(self.later)


@dataclass
class _Shopper:
    user_id: str
    anonymous_id: str
    traits: dict[str, Any]
    email_subscribed: bool
    sms_subscribed: bool


def _shopper(rng: random.Random, index: int) -> _Shopper:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    phone = f"+1415555{index % 10000:04d}" if index % 3 == 0 else None
    traits = {
        "email": f"{first}.{last}.{index}@example.com".lower(),
        "firstName": first,
        "lastName": last,
        "title": rng.choice(TITLES),
        "plan": rng.choice(["free", "pro", "enterprise"]),
    }
    if phone:
        traits["phone"] = phone
    return _Shopper(
        user_id=f"user-{index}",
        anonymous_id=str(uuid.UUID(int=rng.getrandbits(128))),
        traits=traits,
        email_subscribed=index % 2 == 0,  # every other shopper takes the newsletter
        sms_subscribed=phone is not None and index % 4 == 0,
    )


def _klaviyo(**options: Any) -> dict[str, Any]:
    return {"integrations": {"Klaviyo": options}}


def _line(product: tuple[str, str, float, str, str], quantity: int) -> dict[str, Any]:
    product_id, name, price, category, brand = product
    return {
        "product_id": product_id,
        "sku": f"SKU-{product_id[2:]}",
        "name": name,
        "price": price,
        "quantity": quantity,
        "category": category,
        "brand": brand,
        "url": f"{SHOP}/products/{product_id}",
        "image_url": f"{SHOP}/images/{product_id}.jpg",
    }


class _Calls:
    """Calls in time order, one second apart, each with a fresh messageId."""

    def __init__(self, rng: random.Random, start: datetime) -> None:
        self.rng, self.start, self.n = rng, start, 0

    def make(self, kind: str, who: _Shopper | None = None, **fields: Any) -> dict[str, Any]:
        call: dict[str, Any] = {
            "type": kind,
            "messageId": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "timestamp": (self.start + timedelta(seconds=self.n)).isoformat(),
        }
        self.n += 1
        if who is not None:
            call |= {"userId": who.user_id, "anonymousId": who.anonymous_id}
        return call | fields

    def identify(self, who: _Shopper) -> dict[str, Any]:
        wanted = {"email": who.email_subscribed, "sms": who.sms_subscribed}
        if not any(wanted.values()):
            return self.make("identify", who, traits=who.traits)
        subscribe: dict[str, Any] = {k: v for k, v in wanted.items() if v}
        if who.email_subscribed:
            subscribe["list_id"] = NEWSLETTER.id
        return self.make("identify", who, traits=who.traits, **_klaviyo(subscribe=subscribe))

    def order(self, who: _Shopper, lines: list[dict[str, Any]]) -> dict[str, Any]:
        total = round(sum(line["price"] * line["quantity"] for line in lines), 2)
        properties = {
            "order_id": f"O-{self.n:05d}",
            "total": total,
            "revenue": total,
            "currency": "USD",
            "products": lines,
        }
        options = _klaviyo(lists={"add": [VIP.id]}) if total >= VIP_ORDER else {}
        return self.make("track", who, event="Order Completed", properties=properties, **options)

    def opt_out(self, who: _Shopper) -> dict[str, Any]:
        if who.sms_subscribed and self.rng.random() < 0.5:
            who.sms_subscribed = False
            return self.make("track", who, event="SMS Opt Out", **_klaviyo(unsubscribe=["sms"]))
        who.email_subscribed = False
        return self.make(
            "track", who, event="Newsletter Unsubscribed", **_klaviyo(unsubscribe=["email"])
        )

    def shop(self, who: _Shopper) -> dict[str, Any]:
        """One random step of a shopper's visit."""
        roll = self.rng.random()
        product = self.rng.choice(PRODUCTS)
        if roll < 0.1:
            return self.make("page", who, name="Home", properties={"url": SHOP + "/", "path": "/"})
        if roll < 0.45:
            return self.make("track", who, event="Product Viewed", properties=_line(product, 1))
        if roll < 0.65:
            properties = _line(product, self.rng.randint(1, 2))
            return self.make("track", who, event="Product Added", properties=properties)
        if roll < 0.78:
            properties = {"products": [_line(product, 1)], "checkout_url": f"{SHOP}/checkout"}
            return self.make("track", who, event="Checkout Started", properties=properties)
        if roll < 0.97 or not (who.email_subscribed or who.sms_subscribed):
            picks = self.rng.sample(PRODUCTS, self.rng.randint(1, 3))
            return self.order(who, [_line(p, self.rng.randint(1, 2)) for p in picks])
        return self.opt_out(who)


def demo_calls(count: int, seed: int = 7, start: datetime = START) -> Demo:
    """About `count` calls (never fewer than the stories need): `first` the shop's traffic and
    the split person's two halves, `later` the login that joins them and a deletion."""
    rng = random.Random(seed)
    calls = _Calls(rng, start)
    shoppers = [_shopper(rng, i) for i in range(max(count // 12, 3))]
    web = calls.make(
        "identify",
        anonymousId="web-visitor-grace",
        traits={"email": SPLIT_EMAIL, "firstName": "Grace"},
        **_klaviyo(subscribe={"email": True, "list_id": NEWSLETTER.id}),
    )
    app = calls.make(
        "identify",
        userId=SPLIT_USER,
        anonymousId="app-device-grace",
        traits={"firstName": "Grace", "lastName": "Hopper"},
    )
    viewed = calls.make(
        "track", userId=SPLIT_USER, anonymousId="app-device-grace",
        event="Product Viewed", properties=_line(PRODUCTS[4], 1),
    )
    first = [web, app, viewed]
    # the stories, whatever the dice say: a big order of several lines (its buyer subscribed to
    # email and SMS, and joins the VIP list), an order of the shopper who will be forgotten, and
    # a newsletter subscriber who opts out
    first += [calls.identify(shoppers[i]) for i in range(3)]
    first.append(calls.order(shoppers[0], [_line(PRODUCTS[4], 1), _line(PRODUCTS[1], 2)]))
    first.append(calls.order(shoppers[1], [_line(PRODUCTS[0], 1)]))
    first.append(calls.opt_out(shoppers[2]))
    identified = {0, 1, 2}
    later_size = 2
    while len(first) + later_size < count:
        index = rng.randrange(len(shoppers))
        if index not in identified:
            identified.add(index)
            first.append(calls.identify(shoppers[index]))
        else:
            first.append(calls.shop(shoppers[index]))
    forgotten = shoppers[1]
    later = [
        calls.make(
            "identify", userId=SPLIT_USER, anonymousId="app-device-grace",
            traits={"email": SPLIT_EMAIL},
        ),
        calls.make(
            "delete", userId=forgotten.user_id, traits={"email": forgotten.traits["email"]}
        ),
    ]
    return Demo(first, later)


async def publish_demo(
    demo: Demo,
    sandbox_url: str,
    publish: Callable[[list[dict[str, Any]]], int],
    say: Callable[[str], None] = lambda line: print(line, flush=True),
    poll: float = 0.5,
) -> None:
    """Publish `first`, wait until the sandbox holds the split person as two profiles, then
    publish `later` (publishing runs in a thread: it waits for the broker's acks)."""
    loop = asyncio.get_running_loop()
    sent = await loop.run_in_executor(None, publish, demo.first)
    say(f"published {sent} sample calls")
    async with aiohttp.ClientSession() as session:
        while not await _holds_both_halves(session, sandbox_url, demo.split):
            await asyncio.sleep(poll)
    sent = await loop.run_in_executor(None, publish, demo.later)
    say(
        f"published {sent} more: a login that shows two profiles are one person (a merge), "
        "and a deletion"
    )


async def _holds_both_halves(
    session: aiohttp.ClientSession, sandbox_url: str, split: tuple[str, str]
) -> bool:
    async with session.get(f"{sandbox_url}/sandbox/profiles") as resp:
        profiles = (await resp.json())["profiles"]
    email, external_id = split
    return any(p["attributes"].get("email") == email for p in profiles) and any(
        p["attributes"].get("external_id") == external_id for p in profiles
    )
