"""The service's exceptions, one small hierarchy.

    StreamError
    ├── ConfigError            a setting is missing or wrong (fatal at start-up)
    ├── BrokerError            the local Kafka launcher could not start or stop a broker
    ├── RecordError            one record cannot be processed: it goes to the dead-letter topic
    │   ├── DecodeError        bytes are not a record we can read (carries the raw bytes)
    │   └── MappingError       the call cannot be expressed as a Klaviyo payload
    └── KlaviyoError           Klaviyo answered with an error (see stream.klaviyo.errors)

`retriable` says whether trying the same thing again can succeed.
"""

from __future__ import annotations


class StreamError(Exception):
    """Base of every error this package raises on purpose."""

    retriable: bool = False


class ConfigError(StreamError):
    """A setting is missing or invalid; the message names the setting."""


class BrokerError(StreamError):
    """The local Kafka broker could not be resolved, formatted, started or stopped."""


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
