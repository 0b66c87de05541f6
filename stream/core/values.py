"""Values the settings and the accounts file check alike, and how secrets in them are shown.

A Klaviyo revision (its date, and when it retires), a public key, a rate share; URLs that may
carry a password (`MaskedUrl`) and the librdkafka passthrough (`KafkaProperties`), whose reprs
hide their secrets.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Literal

REVISION_LIFETIME_YEARS = 2  # Klaviyo supports a revision for two years
REVISION_WARN_DAYS = 90
# passthrough properties whose values are secrets: masked wherever settings are shown
_SECRET_PROPERTY = re.compile(r"password|secret|token|jaas|\.pem$|oauthbearer\.config", re.I)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


def mask_url(url: str) -> str:
    """`redis://:secret@host:6379/0` → `redis://:***@host:6379/0`; URLs without one unchanged."""
    return _URL_PASSWORD.sub(r"\1***@", url)


class MaskedUrl(str):
    """A URL that may carry a password: `str()` is the real URL (for the client that connects),
    `repr()` and `masked` hide the password, so a settings object never shows it."""

    __slots__ = ()

    @property
    def masked(self) -> str:
        """The URL with its password replaced by `***`."""
        return mask_url(str(self))

    def __repr__(self) -> str:
        return repr(self.masked)


class KafkaProperties(dict[str, str]):
    """The librdkafka passthrough: a plain dict whose repr masks secret-looking values."""

    def masked(self) -> dict[str, str]:
        """A copy with secret-looking values (passwords, secrets, tokens, keys) masked."""
        return {k: "**********" if _SECRET_PROPERTY.search(k) else v for k, v in self.items()}

    def __repr__(self) -> str:
        return repr(self.masked())


def revision_retirement(revision: str) -> date:
    """The day a Klaviyo API revision stops being supported: two years after its date."""
    released = date.fromisoformat(revision[:10])
    try:
        return released.replace(year=released.year + REVISION_LIFETIME_YEARS)
    except ValueError:  # 29 February
        return released.replace(year=released.year + REVISION_LIFETIME_YEARS, day=28)


def revision_warning(revision: str, today: date | None = None) -> str | None:
    """A warning when `revision` retires within 90 days (or has retired), else None."""
    retires = revision_retirement(revision)
    left = (retires - (today or date.today())).days
    if left > REVISION_WARN_DAYS:
        return None
    when = f"retired on {retires}" if left < 0 else f"retires on {retires} ({left} days left)"
    return (
        f"KLAVIYO_REVISION {revision} {when}: Klaviyo supports a revision for two years; "
        "move to a newer revision"
    )


REVISION_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}(\.\w+)?$")


def check_revision(value: str) -> str:
    """A Klaviyo revision: `YYYY-MM-DD[.suffix]` with a real date (ValueError otherwise)."""
    if not REVISION_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} is not a revision: expected YYYY-MM-DD, e.g. 2026-07-15")
    try:
        date.fromisoformat(value[:10])
    except ValueError:
        raise ValueError(
            f"{value} is not a date: a revision is YYYY-MM-DD, e.g. 2026-07-15"
        ) from None
    return value


def check_public_key(value: str) -> str:
    """A public API key (site ID): six letters or digits, never a private key."""
    if value.startswith("pk_"):
        raise ValueError("this is a private key (pk_…); client mode takes the public key")
    if not re.fullmatch(r"[A-Za-z0-9]{6}", value):
        raise ValueError("a public API key (site ID) is 6 letters or digits, like 'AbC123'")
    return value


def parse_share(value: Any) -> float | Literal["auto"]:
    """A rate share: `auto`, a number in (0, 1], or a fraction like `1/3` (ValueError
    otherwise). `auto` follows the group (`KLAVIYO_RATE_SHARE`) or the account's traffic."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and "/" in value:
        top, _, bottom = value.partition("/")
        try:
            value = float(top) / float(bottom)
        except (ValueError, ZeroDivisionError):
            raise ValueError("expected auto, a number or a fraction like 1/3") from None
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected auto, a number or a fraction like 1/3") from None
    if not 0 < share <= 1:
        raise ValueError("a share is more than 0 and at most 1")
    return share
