"""Response documents: Klaviyo's JSON:API shapes and the sandbox's own inspection shapes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .consent import NEVER, Consent, MailingList, can_receive, consent_snapshot
from .profiles import LOCATION_KEYS, STANDARD, Profile
from .store import Event, ImportJob
from .tasks import MergeTask

SHOWN_TOPICS = ("email.marketing", "sms.marketing")
"""Consents every profile snapshot shows, `never` when nothing was ever asked."""

_PUBLIC = (
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)


def profile_resource(profile: Profile, base: str) -> dict[str, Any]:
    """A profile the way GET /api/profiles and profile-import return it."""
    attributes: dict[str, Any] = {name: profile.attributes.get(name) for name in _PUBLIC}
    attributes.update(
        created=profile.created,
        updated=profile.updated,
        last_event_date=profile.last_event_date,
        location={key: profile.location.get(key) for key in LOCATION_KEYS},
        properties=dict(profile.properties),
    )
    return {
        "type": "profile",
        "id": profile.id,
        "attributes": attributes,
        "links": {"self": f"{base}/api/profiles/{profile.id}/"},
    }


def job_resource(job: ImportJob, base: str, *, as_created: bool = False) -> dict[str, Any]:
    """A profile-bulk-import-job resource; `as_created` shows it queued, as a 202 does."""
    attributes: dict[str, Any] = {
        "status": "queued" if as_created else job.status,
        "created_at": job.created_at,
        "total_count": job.total_count,
        "completed_count": 0 if as_created else job.completed_count,
        "failed_count": 0 if as_created else job.failed_count,
        "completed_at": None if as_created else job.completed_at,
        "expires_at": job.expires_at,
        "started_at": None if as_created else job.started_at,
    }
    link = f"{base}/api/profile-bulk-import-jobs/{job.id}"
    return {
        "type": "profile-bulk-import-job",
        "id": job.id,
        "attributes": attributes,
        "relationships": {
            "lists": {
                "data": [{"type": "list", "id": list_id} for list_id in job.list_ids],
                "links": {"self": f"{link}/relationships/lists/", "related": f"{link}/lists/"},
            },
            "profiles": {
                "data": []
                if as_created
                else [{"type": "profile", "id": p} for p in job.profile_ids],
                "links": {
                    "self": f"{link}/relationships/profiles/",
                    "related": f"{link}/profiles/",
                },
            },
            "import-errors": {
                "data": []
                if as_created
                else [{"type": "import-error", "id": e["id"]} for e in job.errors],
                "links": {"related": f"{link}/import-errors/"},
            },
        },
        "links": {"self": f"{link}/"},
    }


def profile_snapshot(profile: Profile, lists: list[str]) -> dict[str, Any]:
    """Everything the sandbox knows about a profile (GET /sandbox/profiles): identifiers,
    properties, consent per channel, suppressions and the ids of the `lists` it is on."""
    topics = sorted({*SHOWN_TOPICS, *profile.consents})
    never = Consent(NEVER, profile.created)
    return {
        "id": profile.id,
        "attributes": {name: profile.attributes.get(name) for name in STANDARD},
        "location": dict(profile.location),
        "properties": dict(profile.properties),
        "merged_ids": list(profile.merged_ids),
        "created": profile.created,
        "updated": profile.updated,
        "last_event_date": profile.last_event_date,
        "consent": {
            topic: consent_snapshot(profile.consents.get(topic, never)) for topic in topics
        },
        "can_receive": {
            topic: can_receive(topic, profile.consents, profile.suppressions) for topic in topics
        },
        "suppressions": [asdict(s) for s in profile.suppressions],
        "lists": lists,
    }


def list_snapshot(mailing_list: MailingList, pending: list[str]) -> dict[str, Any]:
    """A list, its members in the order they joined, and who awaits a double opt-in for it."""
    return {
        "id": mailing_list.id,
        "name": mailing_list.name,
        "opt_in_process": mailing_list.opt_in_process,
        "created": mailing_list.created,
        "updated": mailing_list.updated,
        "members": list(mailing_list.members),
        "pending": pending,
    }


def event_snapshot(event: Event) -> dict[str, Any]:
    """A stored event (GET /sandbox/events)."""
    return asdict(event)


def merge_snapshot(task: MergeTask) -> dict[str, Any]:
    """A requested merge and what became of it (GET /sandbox/merges)."""
    return asdict(task)
