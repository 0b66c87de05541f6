"""What an accepted consent or suppression job does when it runs.

`consent_api` validates a request and accepts it as a job (`Sandbox.accept`); these functions
apply it, at once or `job_delay_seconds` later: find (or create) the profile each entry
means, change it by Klaviyo's rules (`subscriptions`), and record per entry what happened in
the job's `ConsentJob`, which joins the store's `consent_jobs` once it has run. Profiles are
looked up when the job runs, so one deleted in the meantime is skipped (or, named by an
identifier, created again) as Klaviyo's own job would find it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .consent import PHONE_CHANNELS, ConsentJob, MailingList, channel_of
from .profiles import Profile, ProfileConflict, ProfileNotFound
from .stamps import iso
from .store import EventGroup, Store
from .subscriptions import subscribe, suppress, unsubscribe, unsuppress


def topics_of(subscriptions: dict[str, Any]) -> dict[str, Any]:
    """{"email.marketing": consented_at or None, …} for every consent named in `subscriptions`."""
    found: dict[str, Any] = {}
    for channel, kinds in subscriptions.items():
        for kind, record in (kinds or {}).items():
            if isinstance(record, dict) and "consent" in record:
                found[f"{channel}.{kind}"] = record.get("consented_at")
    return found


def profile_for(store: Store, entry: dict[str, Any]) -> Profile:
    """The profile a consent entry means (by id, else its identifiers), created if new.

    Raises ProfileConflict when its email and phone belong to two different profiles, and
    ProfileNotFound when its id names no profile (any more).
    """
    attrs = entry["attributes"]
    named = {k: attrs[k] for k in ("email", "phone_number") if isinstance(attrs.get(k), str)}
    data: dict[str, Any] = {"attributes": named}
    if entry.get("id"):
        data["id"] = entry["id"]
    profile, _ = store.upsert_profile(data)
    return profile


def run_subscribe(
    store: Store,
    job: ConsentJob,
    profiles: list[dict[str, Any]],
    *,
    mailing_list: MailingList | None,
    double_opt_in_default: bool,
    custom_source: str | None,
) -> None:
    """A bulk subscribe job: grant each entry's consents (`job.historical` for an import)."""
    stamp = iso(datetime.now(UTC))
    for index, entry in enumerate(profiles):
        try:
            profile = profile_for(store, entry)
        except ProfileConflict as exc:
            job.record(index, None, f"skipped: {exc.field_name} belongs to another profile")
            continue
        except ProfileNotFound as exc:
            job.record(index, None, f"skipped: profile {exc.profile_id} does not exist")
            continue
        result = subscribe(
            profile,
            topics_of(entry["attributes"]["subscriptions"]),
            mailing_list=mailing_list,
            historical=job.historical,
            double_opt_in_default=double_opt_in_default,
            method="API",
            custom_source=custom_source,
            now=stamp,
        )
        job.record(index, profile.id, result)
    store.consent_jobs.append(job)


def run_unsubscribe(
    store: Store, job: ConsentJob, profiles: list[dict[str, Any]], mailing_list: MailingList | None
) -> None:
    """A bulk unsubscribe job; an identifier no profile holds gets a new, unsubscribed one."""
    stamp = iso(datetime.now(UTC))
    for index, entry in enumerate(profiles):
        attrs = entry["attributes"]
        topics = list(topics_of(attrs["subscriptions"]))
        targets: list[tuple[Profile | None, list[str]]]
        try:
            targets = [(profile_for(store, entry), topics)]
        except ProfileNotFound as exc:
            job.record(index, None, f"skipped: profile {exc.profile_id} does not exist")
            continue
        except ProfileConflict:  # email and phone on two profiles: each channel on its owner
            targets = []
            for key, channels in (("email", {"email"}), ("phone_number", PHONE_CHANNELS)):
                mine = [t for t in topics if channel_of(t) in channels]
                if mine and isinstance(attrs.get(key), str):
                    owner = store.owner(key, attrs[key])
                    targets.append((store.profiles[owner] if owner else None, mine))
        for profile, mine in targets:
            if profile is not None:
                job.record(index, profile.id, unsubscribe(profile, mine, mailing_list, stamp))
    store.consent_jobs.append(job)


def run_suppression(store: Store, job: ConsentJob, targets: list[str], *, by_id: bool) -> None:
    """A suppression job (`job.kind` "suppress" or "unsuppress") over emails, or over the ids
    of a list's members (`by_id`). Suppressing an unknown email creates its profile so the
    suppression sticks."""
    lift = job.kind == "unsuppress"
    stamp = iso(datetime.now(UTC))
    for index, target in enumerate(targets):
        if by_id:
            owner = store.canonical_id(target)
            if owner is None:
                job.record(index, None, f"skipped: profile {target} no longer exists")
                continue
        else:
            owner = store.owner("email", target)
            if owner is None and lift:
                job.record(index, None, "skipped: no profile has this email")
                continue
        if owner is None:
            profile, _ = store.upsert_profile({"attributes": {"email": target}})
        else:
            profile = store.profiles[owner]
        if lift:
            lifted = unsuppress(profile)
            job.record(index, profile.id, "unsuppressed" if lifted else "skipped: not suppressed")
        else:
            suppress(profile, stamp)
            job.record(index, profile.id, "suppressed")
    store.consent_jobs.append(job)


def run_client_subscription(
    store: Store,
    job: ConsentJob,
    who: dict[str, Any],
    topics: dict[str, Any],
    *,
    mailing_list: MailingList | None,
    double_opt_in_default: bool,
    custom_source: str | None,
) -> None:
    """POST /client/subscriptions: the profile found as an event's would be, then subscribed.

    Raises ProfileNotFound for a bare id no profile has (`check_client_subscription` first).
    """
    profile = store.event_profile(who)
    stamp = iso(datetime.now(UTC))
    result = subscribe(
        profile,
        topics,
        mailing_list=mailing_list,
        historical=False,
        double_opt_in_default=double_opt_in_default,
        method="client_subscription",
        custom_source=custom_source,
        now=stamp,
    )
    job.record(0, profile.id, result)
    store.consent_jobs.append(job)


def check_client_subscription(store: Store, who: dict[str, Any]) -> None:
    """What `run_client_subscription` would raise, without writing."""
    store.check_events([EventGroup(who, [])])
