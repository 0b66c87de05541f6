"""Case 8 of the lifecycle issue: a stale subscription never undoes a newer opt-out at Klaviyo.

Klaviyo's bulk subscribe lifts UNSUBSCRIBE and suppression. A historical import (a backfill, a
dead-letter replay) or a subscription whose call is old when it leaves may carry consent given
before the person opted out at Klaviyo itself (an unsubscribe link we never saw): the service
reads the profiles' consent first and leaves out each channel Klaviyo holds a newer opt-out or
suppression for, through the real client, deliverer and the sandbox.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import aiohttp
from pydantic import SecretStr

from stream.core.calls import Record
from stream.core.settings import SANDBOX_API_KEY
from stream.delivery.actions import Action, ActionBatch
from stream.delivery.deliver import Deliverer
from stream.klaviyo.client import KlaviyoClient
from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.telemetry import metrics
from tests.support import sandbox_get
from tests.support.sandbox import consent_job, consenting, post, suppression_job, withdrawing

SUBSCRIBE = "/api/profile-subscription-bulk-create-jobs"
UNSUBSCRIBE = "/api/profile-subscription-bulk-delete-jobs"
SUPPRESS = "/api/profile-suppression-bulk-create-jobs"


def skipped(channel: str) -> float:
    name = "klaviyo_stream_stale_subscribes_skipped_total"
    return metrics.REGISTRY.get_sample_value(name, {"channel": channel}) or 0.0


def subscription(email: str, phone: str, called_at: float, historical: bool = False) -> Action:
    record = Record("calls", 0, 1)
    record.called_at = called_at
    consented = datetime.fromtimestamp(called_at, UTC).isoformat() if historical else None
    return Action(
        "subscribe", {"email": email, "phone_number": phone}, None, [record], person=email,
        channels=("email", "sms"), consented_at=consented, source="klaviyo-stream",
    )  # fmt: skip


async def consent_of(url: str, email: str) -> dict[str, str]:
    [found] = [p for p in (await sandbox_get(url, "/sandbox/profiles"))["profiles"]
               if p["attributes"]["email"] == email]  # fmt: skip
    return {topic: c["state"] for topic, c in found["consent"].items()}


async def test_case8_a_stale_subscription_leaves_out_the_channels_opted_out_since() -> None:
    hour_ago = time.time() - 3600
    async with (
        SandboxServer(SandboxConfig(rate_limits=False)) as sandbox,
        KlaviyoClient(sandbox.url, SecretStr(SANDBOX_API_KEY), "2026-07-15") as client,
    ):
        url = sandbox.url
        async with aiohttp.ClientSession() as http:
            # both people subscribed, then opted out of email at Klaviyo itself, just now
            for email, phone in (("ann@x.io", "+14155550101"), ("bo@x.io", "+14155550102")):
                status, _, _ = await post(http, url + SUBSCRIBE, consent_job(
                    "create", consenting(email, phone, channels=("email", "sms"))))  # fmt: skip
                assert status == 202
            status, _, _ = await post(http, url + UNSUBSCRIBE,
                                      consent_job("delete", withdrawing("ann@x.io")))  # fmt: skip
            assert status == 202
            status, _, _ = await post(http, url + SUPPRESS, suppression_job("create", "bo@x.io"))
            assert status == 202
        before = skipped("email"), skipped("sms")
        deliverer = Deliverer(client, stale_subscribe_seconds=600)
        old_ann = subscription("ann@x.io", "+14155550101", hour_ago)  # read an hour late
        replayed_bo = subscription("bo@x.io", "+14155550102", hour_ago, historical=True)
        fresh = subscription("cy@x.io", "+14155550103", time.time())  # live: never checked
        live = await deliverer.send(ActionBatch("subscribe", [old_ann, fresh]))
        historical = await deliverer.send(ActionBatch("subscribe", [replayed_bo]))
        for settlement in (live, historical):  # a lane keeps live and historical apart
            assert not settlement.failed
        assert len(live.delivered) + len(historical.delivered) == 3
        # the email channels were left out (counted); SMS, never opted out of, went
        assert (skipped("email") - before[0], skipped("sms") - before[1]) == (2, 0)
        assert old_ann.channels == ("sms",) and replayed_bo.channels == ("sms",)
        assert (await consent_of(url, "ann@x.io"))["email.marketing"] == "unsubscribed"
        bo = await consent_of(url, "bo@x.io")
        assert bo["sms.marketing"] == "subscribed"
        lookups = [r for r in (await sandbox_get(url, "/sandbox/requests"))["requests"]
                   if r["method"] == "GET" and r["path"] == "/api/profiles"]  # fmt: skip
        assert lookups and all("cy@x.io" not in str(r["query"]) for r in lookups)
        # a subscription newer than the opt-out goes (checked: every one is, at a bound of 0)
        later = subscription("ann@x.io", "+14155550101", time.time())
        checking = Deliverer(client, stale_subscribe_seconds=0)
        settlement = await checking.send(ActionBatch("subscribe", [later]))
        assert later.channels == ("email", "sms") and len(settlement.delivered) == 1
        assert (await consent_of(url, "ann@x.io"))["email.marketing"] == "subscribed"


