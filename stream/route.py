"""Route stage: is this call sent to Klaviyo at all?

identify and track go to Klaviyo; alias feeds the identity graph only; page calls are mapped
to a "Viewed Page" event when enabled. Everything filtered is counted with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.calls import Call


@dataclass(frozen=True, slots=True)
class Router:
    """Decides per call; `page_event_name` None means page calls are not sent."""

    page_event_name: str | None = "Viewed Page"

    def reason_to_skip(self, call: Call) -> str | None:
        """None when the call goes on to Klaviyo, else a short reason (a metric label)."""
        if call.type in ("identify", "track"):
            return None
        if call.type == "page":
            return None if self.page_event_name else "page_disabled"
        return "identity_only"  # alias: consumed by the identity stage, nothing to send

    def metric_name(self, call: Call) -> str | None:
        """Klaviyo metric name of an event-like call."""
        if call.type == "page":
            return self.page_event_name
        return call.event
