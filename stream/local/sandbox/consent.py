"""Consent, suppression and lists: what a profile agreed to, what blocks it, where it belongs.

Klaviyo keeps consent per channel and purpose ("email.marketing", "sms.marketing",
"sms.transactional", …) with a state that is `never`, `pending` (a double opt-in awaiting
confirmation), `subscribed` or `unsubscribed`. Email has suppressions besides: a global one per
reason (USER_SUPPRESSED, UNSUBSCRIBE, HARD_BOUNCE, …) that blocks email marketing whatever the
consent says, and per-list ones. List membership is separate from consent: being on a list
never subscribes anyone, and a subscription need not name a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NEVER = "never"
PENDING = "pending"
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"

SINGLE_OPT_IN = "single_opt_in"
DOUBLE_OPT_IN = "double_opt_in"

DOUBLE_OPT_IN_TOPICS = frozenset({"email.marketing", "sms.marketing"})
"""The consents a double opt-in list (or account default) asks the person to confirm."""
PHONE_CHANNELS = frozenset({"sms", "whatsapp"})
LIFTED_BY_SUBSCRIBE = frozenset({"UNSUBSCRIBE", "SPAM_REPORT", "USER_SUPPRESSED"})
"""The spec: subscribing "will remove any UNSUBSCRIBE, SPAM_REPORT or USER_SUPPRESSED
suppressions"; HARD_BOUNCE and INVALID_EMAIL stay."""

_API_CONSENT = {
    NEVER: "NEVER_SUBSCRIBED",
    PENDING: "NEVER_SUBSCRIBED",
    SUBSCRIBED: "SUBSCRIBED",
    UNSUBSCRIBED: "UNSUBSCRIBED",
}


@dataclass(slots=True)
class Consent:
    """One channel-and-purpose consent of a profile ("email.marketing", …).

    `before` is the state a pending double opt-in replaces once confirmed (and what the API
    still reports meanwhile); `list_id` is the list a confirmation adds the profile to.
    """

    state: str
    updated_at: str
    consented_at: str | None = None
    historical: bool = False
    method: str | None = None
    custom_source: str | None = None
    double_opt_in: bool = False
    list_id: str | None = None
    before: str = NEVER


@dataclass(slots=True)
class Suppression:
    """Why email marketing is blocked, since when (and for which list, if only one)."""

    reason: str
    timestamp: str
    list_id: str | None = None


@dataclass
class MailingList:
    """A Klaviyo list: its opt-in process and members (profile id → when added)."""

    id: str
    name: str
    opt_in_process: str
    created: str
    updated: str
    members: dict[str, str] = field(default_factory=dict)

    @property
    def double_opt_in(self) -> bool:
        return self.opt_in_process == DOUBLE_OPT_IN


@dataclass
class ConsentJob:
    """One accepted consent or suppression request and what it did to each profile, for
    inspection: `results` holds {"index", "profile_id", "result"} per entry, where a result
    starting with "skipped" means nothing was changed for that entry."""

    id: str
    kind: str  # subscribe, unsubscribe, suppress, unsuppress, client_subscription
    created_at: str
    total: int
    list_id: str | None = None
    historical: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)

    def record(self, index: int, profile_id: str | None, result: str) -> None:
        """What entry `index` did (to `profile_id`)."""
        self.results.append({"index": index, "profile_id": profile_id, "result": result})


def channel_of(topic: str) -> str:
    """The channel of a topic: "email" for "email.marketing"."""
    return topic.partition(".")[0]


def blocked(suppressions: list[Suppression]) -> bool:
    """True when a global email suppression is in place (list suppressions do not count)."""
    return any(s.list_id is None for s in suppressions)


def can_receive(topic: str, consents: dict[str, Consent], suppressions: list[Suppression]) -> bool:
    """Whether marketing on `topic` may reach the profile: consent given, email unsuppressed."""
    consent = consents.get(topic)
    if consent is None or consent.state != SUBSCRIBED:
        return False
    return not (channel_of(topic) == "email" and blocked(suppressions))


def merged_consents(dest: dict[str, Consent], source: dict[str, Consent]) -> dict[str, Consent]:
    """A merge's consents: per topic the more recently updated record wins (the destination's
    on a tie), so an unsubscribe on either profile survives an older subscribe on the other."""
    out = dict(dest)
    for topic, consent in source.items():
        mine = out.get(topic)
        if mine is None or mine.state == NEVER or consent.updated_at > mine.updated_at:
            out[topic] = consent
    return out


def consent_snapshot(consent: Consent) -> dict[str, Any]:
    """The inspection form of one consent record."""
    return {
        "state": consent.state,
        "updated_at": consent.updated_at,
        "consented_at": consent.consented_at,
        "historical": consent.historical,
        "method": consent.method,
        "custom_source": consent.custom_source,
        "double_opt_in": consent.double_opt_in,
        "list_id": consent.list_id,
    }


def api_subscriptions(
    consents: dict[str, Consent], suppressions: list[Suppression]
) -> dict[str, Any]:
    """`attributes.subscriptions` of a profile (GET /api/profiles with
    `additional-fields[profile]=subscriptions`), in Klaviyo's shape."""

    def record(topic: str, can: str) -> dict[str, Any]:
        consent = consents.get(topic)
        state = NEVER if consent is None else consent.state
        shown = consent.before if consent is not None and state == PENDING else state
        return {
            can: can_receive(topic, consents, suppressions),
            "consent": _API_CONSENT[shown],
            "consent_timestamp": consent.consented_at if consent else None,
            "last_updated": consent.updated_at if consent else None,
            "method": consent.method if consent else None,
            "method_detail": "",
            "custom_method_detail": consent.custom_source if consent else None,
            "double_optin": consent.double_opt_in if consent else None,
        }

    email = record("email.marketing", "can_receive_email_marketing")
    email["suppression"] = [
        {"reason": s.reason, "timestamp": s.timestamp} for s in suppressions if s.list_id is None
    ]
    email["list_suppressions"] = [
        {"list_id": s.list_id, "reason": s.reason, "timestamp": s.timestamp}
        for s in suppressions
        if s.list_id is not None
    ]
    sms = record("sms.marketing", "can_receive_sms_marketing")
    for key in ("custom_method_detail", "double_optin"):
        sms.pop(key)
    transactional = record("sms.transactional", "can_receive_sms_transactional")
    for key in ("custom_method_detail", "double_optin"):
        transactional.pop(key)
    return {
        "email": {"marketing": email},
        "sms": {"marketing": sms, "transactional": transactional},
    }
