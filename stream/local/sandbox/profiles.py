"""Profiles and identity: who is who in the sandbox account.

Identity rules mirror Klaviyo: email (lower-cased), phone_number, external_id and
anonymous_id each belong to at most one profile; a merged profile's id keeps resolving to
the profile it was merged into. Upserts follow Klaviyo's rules: null clears, absent keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .consent import Consent, Suppression
from .stamps import new_id, now_iso
from .validation import normalize_email

IDENTIFIERS = ("email", "phone_number", "external_id", "anonymous_id")
STANDARD = (
    *IDENTIFIERS,
    "_kx",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)
LOCATION_KEYS = (
    "address1",
    "address2",
    "city",
    "country",
    "latitude",
    "longitude",
    "region",
    "zip",
    "timezone",
    "ip",
)


class ProfileConflict(Exception):
    """The identifiers of one upsert belong to two different existing profiles (409)."""

    def __init__(self, profile_id: str, duplicate_id: str, field_name: str) -> None:
        super().__init__(f"{field_name} belongs to profile {duplicate_id}")
        self.profile_id = profile_id
        self.duplicate_id = duplicate_id
        self.field_name = field_name


class ProfileNotFound(Exception):
    """A profile id that is not (and never was merged into) a stored profile."""

    def __init__(self, profile_id: str) -> None:
        super().__init__(f"profile {profile_id} does not exist")
        self.profile_id = profile_id


@dataclass(slots=True)
class Profile:
    """One Klaviyo profile; `attributes` holds the standard fields, `properties` custom ones,
    `consents` and `suppressions` what it may receive."""

    id: str
    created: str
    updated: str
    attributes: dict[str, Any] = field(default_factory=dict)
    location: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    last_event_date: str | None = None
    merged_ids: list[str] = field(default_factory=list)
    consents: dict[str, Consent] = field(default_factory=dict)  # "email.marketing" → consent
    suppressions: list[Suppression] = field(default_factory=list)  # email only


def norm(name: str, value: str) -> str:
    """An identifier in its stored form (emails lower-cased)."""
    return normalize_email(value) if name == "email" else value


class ProfileBook:
    """Profiles and their identifier indexes; the base of the sandbox `Store`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every profile and merge."""
        self.profiles: dict[str, Profile] = {}
        self.merged_into: dict[str, str] = {}
        self.index: dict[str, dict[str, str]] = {name: {} for name in IDENTIFIERS}

    # identity ------------------------------------------------------------------------------

    def canonical_id(self, profile_id: str) -> str | None:
        """The live profile id `profile_id` stands for (following merges), or None."""
        seen = 0
        while profile_id in self.merged_into and seen < 10_000:
            profile_id = self.merged_into[profile_id]
            seen += 1
        return profile_id if profile_id in self.profiles else None

    def owner(self, name: str, value: str) -> str | None:
        """The id of the profile holding identifier `name`=`value`, if any."""
        return self.index[name].get(norm(name, value))

    def _matches(self, data: dict[str, Any], names: tuple[str, ...]) -> list[tuple[str, str]]:
        """(field, profile id) for the id and every identifier of `data` that is taken."""
        found: list[tuple[str, str]] = []
        if data.get("id"):
            live = self.canonical_id(data["id"])
            if live is not None:
                found.append(("id", live))
        attrs = data.get("attributes") or {}
        for name in names:
            value = attrs.get(name)
            if isinstance(value, str) and value:
                owner = self.owner(name, value)
                if owner is not None:
                    found.append((name, owner))
        return found

    def _create(self) -> Profile:
        now = now_iso()
        profile = Profile(new_id(), now, now)  # id, created, updated
        self.profiles[profile.id] = profile
        return profile

    def _set_identifier(self, profile: Profile, name: str, value: str | None) -> None:
        old = profile.attributes.get(name)
        if (
            isinstance(value, str)
            and isinstance(old, str)
            and old == norm(name, value)
            and self.index[name].get(old) == profile.id
        ):
            return  # already this profile's: nothing would change
        if old is not None:
            self.index[name].pop(norm(name, old), None)
        if value is None:
            profile.attributes[name] = None
            return
        value = norm(name, value)
        profile.attributes[name] = value
        self.index[name][value] = profile.id

    def _apply(self, profile: Profile, data: dict[str, Any], *, only_free: bool) -> None:
        """Upsert semantics: null clears, absent keeps, custom properties merge key by key."""
        attrs = data.get("attributes") or {}
        for name in STANDARD:
            if name not in attrs:
                continue
            value = attrs[name]
            if name in IDENTIFIERS:
                taken = only_free and isinstance(value, str)
                if taken and self.owner(name, value) not in (None, profile.id):
                    continue
                self._set_identifier(profile, name, value)
            else:
                profile.attributes[name] = value
        if "location" in attrs:
            location = attrs["location"]
            if location is None:
                profile.location = {}
            else:
                profile.location.update(location)
        if "properties" in attrs:
            if attrs["properties"] is None:
                profile.properties = {}
            else:
                profile.properties.update(attrs["properties"])
        meta = data.get("meta") or {}
        patch = meta.get("patch_properties")
        if patch:
            self._patch(profile, patch)
        profile.updated = now_iso()

    @staticmethod
    def _patch(profile: Profile, patch: dict[str, Any]) -> None:
        """meta.patch_properties: append / unappend values of list properties, unset keys."""
        props = profile.properties
        for key, value in (patch.get("append") or {}).items():
            current = props.get(key)
            items = current if isinstance(current, list) else ([] if current is None else [current])
            props[key] = items + (value if isinstance(value, list) else [value])
        for key, value in (patch.get("unappend") or {}).items():
            if isinstance(props.get(key), list):
                drop = value if isinstance(value, list) else [value]
                props[key] = [item for item in props[key] if item not in drop]
        unset = patch.get("unset")
        for key in [unset] if isinstance(unset, str) else (unset or []):
            props.pop(key, None)

    def upsert_profile(self, data: dict[str, Any]) -> tuple[Profile, bool]:
        """profile-import: match by id or any identifier, update or create.

        Returns (profile, created). Raises ProfileNotFound for an unknown id and
        ProfileConflict when the identifiers point at two different profiles.
        """
        if data.get("id") and self.canonical_id(data["id"]) is None:
            raise ProfileNotFound(data["id"])
        matches = self._matches(data, ("email", "phone_number", "external_id"))
        ids: list[str] = []
        for _, pid in matches:
            if pid not in ids:
                ids.append(pid)
        if len(ids) > 1:
            field_name = next(name for name, pid in matches if pid == ids[1])
            raise ProfileConflict(ids[0], ids[1], field_name)
        created = not ids
        profile = self._create() if created else self.profiles[ids[0]]
        self._apply(profile, data, only_free=False)
        return profile, created

    def event_profile(self, data: dict[str, Any]) -> Profile:
        """The profile an event belongs to: id, email, phone, external_id, anonymous_id, else new.

        The event's profile attributes update it; identifiers owned by another profile are
        left where they are.
        """
        matches = self._matches(data, IDENTIFIERS)
        if not matches and data.get("id"):
            attrs = data.get("attributes") or {}
            if not any(attrs.get(name) for name in IDENTIFIERS):
                raise ProfileNotFound(data["id"])
        profile = self.profiles[matches[0][1]] if matches else self._create()
        self._apply(profile, data, only_free=True)
        return profile
