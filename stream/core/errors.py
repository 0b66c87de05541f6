"""The service's exceptions: the whole tree, in one module.

    StreamError
    ├── ConfigError                  a setting or config file is wrong (fatal at start-up)
    │   ├── EventDefinitionError     the event-definitions file
    │   ├── TransformConfigError     the transformations file
    │   ├── HipaaConfigError         the HIPAA allow-lists
    │   ├── ConsentConfigError       the consent rules file
    │   ├── CatalogConfigError       the catalog column mapping (Debezium) file
    │   ├── AccountsConfigError      the accounts file (ACCOUNTS_FILE), or an account's key
    │   └── RevisionRefused          Klaviyo refused the pinned revision header (fatal at run time)
    ├── BrokerError                  the local Kafka launcher could not start or stop a broker
    ├── LocalRegistryError           the local Schema Registry could not be fetched or started
    ├── ReplayError                  `dlq replay` could not read or republish
    ├── PublishError                 `produce`: the broker did not acknowledge every record
    ├── StatusError                  `status`: the broker could not be asked
    ├── RecordError                  one record cannot be processed: a dead letter
    │   ├── DecodeError              bytes are not a record we can read
    │   ├── MappingError             the call cannot be expressed as a Klaviyo payload
    │   │   ├── InvalidIdentifier    an email, phone or id Klaviyo would refuse
    │   │   └── InternalError        an unexpected exception while processing one record
    │   └── NoAccount                no account of ACCOUNTS_FILE takes it (`unmatched: dead-letter`)
    ├── Unavailable                  a dependency failed; wait and try again (never a dead letter)
    │   ├── StateError               the state store (SQLite locked, Redis down)
    │   ├── RegistryUnavailable      the Schema Registry (transport error, 5xx)
    │   └── DeadLetterUnavailable    the dead-letter topic did not acknowledge a write
    ├── Interrupted                  a stop (SIGTERM, SIGINT) cut a dependency wait short
    ├── FatalDeliveryError           delivery cannot go on for any record (the API key was refused)
    └── KlaviyoError                 Klaviyo answered with an error, or not at all
        ├── KlaviyoUnavailable       timeout or connection error                retriable
        ├── KlaviyoServerError       5xx                                        retriable
        ├── RateLimited              429, carries retry_after seconds           retriable
        ├── ImportJobUnknown         a bulk import job's outcome cannot be read
        ├── DeletionNotConfirmed     a deleted person's profile kept reappearing
        ├── CatalogJobUnknown        a catalog bulk job's outcome cannot be read    retriable
        ├── AccountParked            one account's items parked past PARK_MAX_SECONDS/ITEMS
        └── KlaviyoClientError       4xx: the request itself is wrong          not retriable
            ├── Unauthorized         401/403: the API key                       fatal
            ├── DuplicateProfile     409: carries duplicate_profile_id          healed by a merge
            ├── InvalidRequest       400: carries the JSON pointers of the bad fields
            ├── ImportRecordFailed   one profile of a bulk import job failed
            └── CatalogResourceFailed  one resource of a catalog bulk job failed

`retriable` says whether trying the same thing again can succeed. Messages never carry a
secret: Klaviyo errors are built from Klaviyo's answer, never from the request headers.
"""

from __future__ import annotations

from typing import Any


class StreamError(Exception):
    """Base of every error this package raises on purpose."""

    retriable: bool = False


# configuration ----------------------------------------------------------------------------


class ConfigError(StreamError):
    """A setting is missing or invalid; the message names the setting."""


class EventDefinitionError(ConfigError):
    """The event-definitions file is invalid; the message names the file, entry and field."""


class TransformConfigError(ConfigError):
    """The transformations file is invalid; the message names the file, rule and field."""


class HipaaConfigError(ConfigError):
    """The HIPAA allow-list file is invalid."""


class ConsentConfigError(ConfigError):
    """The consent rules file is invalid, or asks what the connection mode cannot do."""


class CatalogConfigError(ConfigError):
    """The catalog column mapping file (`CATALOG_MAPPING_FILE`) is invalid."""


class AccountsConfigError(ConfigError):
    """The accounts file (`ACCOUNTS_FILE`) is invalid, or an account's key cannot be read; the
    message names the file, the account and the field, never a key."""


class RevisionRefused(ConfigError):
    """Klaviyo answered 400 naming a header or query parameter (the pinned `revision`), not a
    record: every request would fail alike, so the service stops and dead-letters nothing."""


class BrokerError(StreamError):
    """The local Kafka broker could not be resolved, formatted, started or stopped."""


class LocalRegistryError(StreamError):
    """The local Schema Registry (Apicurio) could not be fetched, checked, started or stopped."""


class ReplayError(StreamError):
    """The dead-letter topic could not be read, or a replayed record was not acknowledged."""


class PublishError(StreamError):
    """The broker did not acknowledge every record."""


class StatusError(StreamError):
    """The broker could not be asked (unreachable, not authorized)."""


# one record -------------------------------------------------------------------------------


class RecordError(StreamError):
    """One record cannot be processed; it is dead-lettered with `reason` and the service goes on."""

    stage: str = "process"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeError(RecordError):
    """The record's bytes are not a call we can read."""

    stage = "decode"


class MappingError(RecordError):
    """The call is readable but cannot become a valid Klaviyo payload."""

    stage = "map"


class InvalidIdentifier(MappingError):
    """An email, phone number or id that Klaviyo would refuse: `field` names it (`email`,
    `phone`, `external_id`) and `kind` says why in a word (a metric label); the message
    never repeats the value."""

    stage = "identity"

    def __init__(self, reason: str, field: str = "identifier", kind: str = "invalid") -> None:
        super().__init__(reason)
        self.field = field
        self.kind = kind


class InternalError(MappingError):
    """An exception nobody expected, raised while processing one record: the record is
    dead-lettered with it (the per-record barrier) and the service goes on."""

    stage = "process"


class NoAccount(RecordError):
    """No account of the accounts file takes the record, and the file says `unmatched:
    dead-letter`."""

    stage = "route"


# dependencies that come back --------------------------------------------------------------


class Unavailable(StreamError):
    """A dependency failed in a way that says nothing about the record: wait and try again."""

    retriable = True


class StateError(Unavailable):
    """The state store failed; `retriable` is False for errors a retry cannot fix."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class RegistryUnavailable(Unavailable):
    """The Schema Registry did not answer, or answered 5xx."""


class DeadLetterUnavailable(Unavailable):
    """The dead-letter topic did not acknowledge a write (broker down past the timeout)."""


class Interrupted(StreamError):
    """A stop (SIGTERM, SIGINT) came while waiting for a dependency: the work that waited is
    left unfinished (its offsets never stored), and the next run reads it again."""


class FatalDeliveryError(StreamError):
    """Delivery cannot go on for any record (the API key was refused): stop the service."""


# Klaviyo ----------------------------------------------------------------------------------


class KlaviyoError(StreamError):
    """Klaviyo did not accept a request (after `attempts` tries, the first at `first_attempt`)."""

    attempts: int = 1
    first_attempt: float | None = None

    def __init__(
        self, message: str, status: int = 0, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or []

    @property
    def code(self) -> str | None:
        """Klaviyo's error code of the first error (`invalid`, `duplicate_profile`, …)."""
        return self.errors[0].get("code") if self.errors else None

    @property
    def pointers(self) -> list[str]:
        """JSON pointers (`/data/attributes/...`) of the fields Klaviyo refused."""
        return [
            e["source"]["pointer"]
            for e in self.errors
            if isinstance(e.get("source"), dict) and e["source"].get("pointer")
        ]

    @property
    def parameters(self) -> list[str]:
        """Headers or query parameters Klaviyo refused (`revision`, `company_id`, …)."""
        return [
            e["source"]["parameter"]
            for e in self.errors
            if isinstance(e.get("source"), dict) and e["source"].get("parameter")
        ]


class KlaviyoUnavailable(KlaviyoError):
    """No answer: timeout, refused or dropped connection."""

    retriable = True


class KlaviyoServerError(KlaviyoError):
    """Klaviyo answered 5xx."""

    retriable = True


class RateLimited(KlaviyoError):
    """429: wait `retry_after` seconds before the next request to that endpoint."""

    retriable = True

    def __init__(
        self, message: str, retry_after: float, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message, 429, errors)
        self.retry_after = retry_after


class ImportJobUnknown(KlaviyoError):
    """A bulk import job's outcome cannot be learnt (no job id, it did not finish in time, or it
    ended without completing): none of its records can be called delivered."""


class DeletionNotConfirmed(KlaviyoError):
    """A deletion was taken, but every confirmation round still found a profile of the person
    (deleted again each time): the erasure cannot be called done."""
class CatalogJobUnknown(KlaviyoError):
    """A catalog bulk job's outcome cannot be read (it is gone, cancelled, or answered without
    an id): its resources are sent again, which the create/update recovery makes safe."""

    retriable = True


class AccountParked(KlaviyoError):
    """One account's item stayed parked (its key refused, its Klaviyo failing) past
    PARK_MAX_SECONDS, or was among its oldest past PARK_MAX_ITEMS: dead-lettered for that
    account, replayable with `dlq replay --account` once it is fixed. `status` and `code` are
    the last refusal's."""


class KlaviyoClientError(KlaviyoError):
    """4xx: sending the same request again cannot succeed."""


class Unauthorized(KlaviyoClientError):
    """401/403: the API key is missing, wrong or lacks a scope."""


class InvalidRequest(KlaviyoClientError):
    """400: a field is invalid; `pointers` says which."""


class DuplicateProfile(KlaviyoClientError):
    """409: the identifiers sent belong to another profile, `duplicate_profile_id`."""

    @property
    def duplicate_profile_id(self) -> str | None:
        meta = self.errors[0].get("meta") if self.errors else None
        return meta.get("duplicate_profile_id") if isinstance(meta, dict) else None


class ImportRecordFailed(KlaviyoClientError):
    """A bulk import job accepted the request but failed this profile (`/import-errors`)."""


class CatalogResourceFailed(KlaviyoClientError):
    """A catalog bulk job completed but failed this resource: Klaviyo's per-resource error."""
