"""What consent, suppression and list requests do to the account, once they are validated.

The rules are Klaviyo's, from the endpoint descriptions of the official OpenAPI:
- subscribing "will remove any UNSUBSCRIBE, SPAM_REPORT or USER_SUPPRESSED suppressions"; a list
  with double opt-in (or, without a list, the account's default) leaves consent pending until
  the person confirms; `historical_import` bypasses double opt-in and subscribes at once;
- unsubscribing with a list: "Profiles not in the specified list will be globally
  unsubscribed"; a member is taken off that list (a list suppression) and keeps its consent;
- suppression blocks email marketing whatever the consent; unsuppressing "only removes
  suppressions with reason USER_SUPPRESSED";
- list membership is not consent: adding to or removing from a list changes no consent.
"""

from __future__ import annotations

import random
import string
from typing import Any

from .consent import (
    DOUBLE_OPT_IN_TOPICS,
    LIFTED_BY_SUBSCRIBE,
    NEVER,
    PENDING,
    SUBSCRIBED,
    UNSUBSCRIBED,
    Consent,
    ConsentJob,
    MailingList,
    Suppression,
    channel_of,
)
from .profiles import Profile
from .stamps import new_id
from .store import Store

_LIST_ID_CHARS = string.ascii_letters + string.digits


def new_list(
    store: Store, name: str, opt_in_process: str, now: str, list_id: str = ""
) -> MailingList:
    """Create a list (a 6-character id like Klaviyo's unless one is given)."""
    while not list_id or list_id in store.lists:
        list_id = "".join(random.choices(_LIST_ID_CHARS, k=6))
    created = MailingList(list_id, name, opt_in_process, now, now)
    store.lists[list_id] = created
    return created


def add_members(mailing_list: MailingList, profile_ids: list[str], now: str) -> None:
    """Put profiles on a list (no consent change); already there stays as it was."""
    for profile_id in profile_ids:
        mailing_list.members.setdefault(profile_id, now)
    mailing_list.updated = now


def remove_members(mailing_list: MailingList, profile_ids: list[str], now: str) -> None:
    """Take profiles off a list (no consent change); absent ones are ignored."""
    for profile_id in profile_ids:
        mailing_list.members.pop(profile_id, None)
    mailing_list.updated = now


def subscribe(
    profile: Profile,
    consents: dict[str, str | None],
    *,
    mailing_list: MailingList | None,
    historical: bool,
    double_opt_in_default: bool,
    method: str,
    custom_source: str | None,
    now: str,
) -> str:
    """Grant `consents` (topic → consented_at, given only for a historical import); returns
    "subscribed", "pending" (all waiting for a confirmation) or "subscribed, pending".

    Double opt-in topics of a double opt-in list (or of the account default, without a list)
    become pending, unless historical or already subscribed; the list membership then waits
    for the confirmation too. Everything else is subscribed now.
    """
    double = mailing_list.double_opt_in if mailing_list is not None else double_opt_in_default
    joined = pending = False
    for topic, consented_at in consents.items():
        current = profile.consents.get(topic)
        state = current.state if current is not None else NEVER
        waits = double and not historical and topic in DOUBLE_OPT_IN_TOPICS and state != SUBSCRIBED
        profile.consents[topic] = Consent(
            state=PENDING if waits else SUBSCRIBED,
            updated_at=now,
            consented_at=None if waits else (consented_at or now),
            historical=historical,
            method=method,
            custom_source=custom_source,
            double_opt_in=waits,
            list_id=mailing_list.id if mailing_list is not None else None,
            before=state if state != PENDING or current is None else current.before,
        )
        joined = joined or not waits
        pending = pending or waits
    if any(channel_of(topic) == "email" for topic in consents):
        this_list = mailing_list.id if mailing_list is not None else None

        def lifted(suppression: Suppression) -> bool:
            if suppression.reason not in LIFTED_BY_SUBSCRIBE:
                return False
            return suppression.list_id is None or suppression.list_id == this_list

        profile.suppressions = [s for s in profile.suppressions if not lifted(s)]
    if mailing_list is not None and joined:
        add_members(mailing_list, [profile.id], now)
    return ", ".join(r for r, held in (("subscribed", joined), ("pending", pending)) if held)


def confirm(store: Store, profile: Profile, channel: str, now: str) -> bool:
    """The person confirmed a double opt-in on `channel`: pending marketing consent becomes
    subscribed and the list waiting for it gets the profile. False if nothing was pending."""
    consent = profile.consents.get(f"{channel}.marketing")
    if consent is None or consent.state != PENDING:
        return False
    consent.state, consent.consented_at, consent.updated_at = SUBSCRIBED, now, now
    mailing_list = store.lists.get(consent.list_id or "")
    if mailing_list is not None:
        add_members(mailing_list, [profile.id], now)
    return True


def unsubscribe(
    profile: Profile,
    topics: list[str],
    mailing_list: MailingList | None,
    now: str,
) -> str:
    """Withdraw `topics`; returns "removed from list" or "unsubscribed globally".

    A member of the given list is taken off it (email gets a list suppression) and keeps its
    consent; anyone else, or everyone when no list is given, is unsubscribed globally
    (email gets the UNSUBSCRIBE suppression).
    """
    if mailing_list is not None and profile.id in mailing_list.members:
        remove_members(mailing_list, [profile.id], now)
        if any(channel_of(topic) == "email" for topic in topics):
            _add_suppression(profile, Suppression("UNSUBSCRIBE", now, mailing_list.id))
        return "removed from list"
    for topic in topics:
        current = profile.consents.get(topic)
        profile.consents[topic] = Consent(
            state=UNSUBSCRIBED,
            updated_at=now,
            consented_at=current.consented_at if current else None,
            method="bulk_unsubscribe",
            before=current.state if current else NEVER,
        )
    if any(channel_of(topic) == "email" for topic in topics):
        _add_suppression(profile, Suppression("UNSUBSCRIBE", now))
    return "unsubscribed globally"


def suppress(profile: Profile, now: str) -> None:
    """A manual (USER_SUPPRESSED) global email suppression."""
    _add_suppression(profile, Suppression("USER_SUPPRESSED", now))


def unsuppress(profile: Profile) -> bool:
    """Remove the USER_SUPPRESSED suppression only; True if there was one."""
    kept = [s for s in profile.suppressions if s.reason != "USER_SUPPRESSED" or s.list_id]
    changed = len(kept) != len(profile.suppressions)
    profile.suppressions = kept
    return changed


def _add_suppression(profile: Profile, suppression: Suppression) -> None:
    key = (suppression.reason, suppression.list_id)
    if all((s.reason, s.list_id) != key for s in profile.suppressions):
        profile.suppressions.append(suppression)


def new_job(kind: str, total: int, now: str, **details: Any) -> ConsentJob:
    """A job record for inspection (`ConsentJob`)."""
    return ConsentJob(new_id(), kind, now, total, **details)
