"""Prometheus metrics of every stage. Labels have bounded cardinality: never a person's id.

Names follow Prometheus conventions (snake_case, base units, `_total`, `_seconds`, `_bytes`).
All live in one registry so the service, tests and `/metrics` see the same series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
P = "klaviyo_stream_"

# consume → decode → route → dedup → identity
RECORDS_CONSUMED = Counter(
    P + "records_consumed_total",
    "Records read from Kafka.",
    ["topic", "partition"],
    registry=REGISTRY,
)
RECORDS_DECODED = Counter(
    P + "records_decoded_total", "Records decoded into calls.", ["type"], registry=REGISTRY
)
RECORDS_FILTERED = Counter(
    P + "records_filtered_total",
    "Calls not sent to Klaviyo by routing.",
    ["type", "reason"],
    registry=REGISTRY,
)
RECORDS_DEDUPLICATED = Counter(
    P + "records_deduplicated_total",
    "Calls dropped as already seen (messageId).",
    registry=REGISTRY,
)
RECORDS_HELD = Counter(
    P + "records_held_total",
    "Calls of anonymous persons held until an identify.",
    registry=REGISTRY,
)
RECORDS_RELEASED = Counter(
    P + "records_released_total", "Held calls released, by outcome.", ["outcome"], registry=REGISTRY
)
IDENTITY_LINKS = Counter(
    P + "identity_links_total", "Identifiers linked to a person.", ["kind"], registry=REGISTRY
)
PROFILE_MERGES = Counter(
    P + "profile_merges_total",
    "Klaviyo profiles merged after a 409 duplicate_profile.",
    registry=REGISTRY,
)

STALE_RECORDS = Counter(
    P + "records_stale_total",
    "Fetched records of a partition revoked meanwhile: not begun, its next owner reads them.",
    registry=REGISTRY,
)
OUTCOMES = Counter(
    P + "outcomes_total",
    "Items (and records without items) finished, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
DEPENDENCY_ERRORS = Counter(
    P + "dependency_errors_total",
    "Failures of a dependency the service waited out (state store, registry, dead-letter topic).",
    ["dependency"],
    registry=REGISTRY,
)

# batch → deliver
BATCHES_SENT = Counter(
    P + "batches_sent_total",
    "Requests sent to Klaviyo.",
    ["endpoint", "status_class"],
    registry=REGISTRY,
)
RECORDS_SENT = Counter(
    P + "records_sent_total", "Records Klaviyo accepted.", ["endpoint"], registry=REGISTRY
)
BATCH_SIZE = Histogram(
    P + "batch_size_records",
    "Records per request.",
    ["endpoint"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 10000),
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    P + "request_duration_seconds",
    "Klaviyo request latency.",
    ["endpoint", "status_class"],
    registry=REGISTRY,
)
RETRIES = Counter(
    P + "retries_total", "Requests retried.", ["endpoint", "reason"], registry=REGISTRY
)
RATE_LIMITED = Counter(
    P + "rate_limited_total", "429 answers from Klaviyo.", ["endpoint"], registry=REGISTRY
)
GOVERNOR_WAIT = Counter(
    P + "governor_wait_seconds_total",
    "Seconds spent waiting on the rate-limit governor.",
    ["endpoint"],
    registry=REGISTRY,
)
IN_FLIGHT_REQUESTS = Gauge(
    P + "in_flight_requests", "Requests awaiting Klaviyo's answer.", registry=REGISTRY
)
PENDING_RECORDS = Gauge(
    P + "pending_records", "Records consumed but not yet acknowledged.", registry=REGISTRY
)

# dead letters → ack
DEAD_LETTERS = Counter(
    P + "dead_letters_total",
    "Records sent to the dead-letter topic.",
    ["stage", "reason"],
    registry=REGISTRY,
)
OFFSETS_STORED = Counter(
    P + "offsets_stored_total", "Offset stores after delivery.", registry=REGISTRY
)
LAST_COMMIT = Gauge(
    P + "last_commit_timestamp_seconds",
    "Unix time of the last successful commit.",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    P + "consumer_lag_records",
    "High watermark minus consumed position.",
    ["topic", "partition"],
    registry=REGISTRY,
)
COMMITTED_LAG = Gauge(
    P + "committed_lag_records",
    "High watermark minus the last committed offset: what a restart would read again.",
    ["topic", "partition"],
    registry=REGISTRY,
)
PARTITION_STALLED = Gauge(
    P + "partition_stalled_seconds",
    "Seconds since the partition's offset last moved while records of it wait (0: none wait).",
    ["topic", "partition"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    P + "assigned_partitions", "Partitions assigned to this consumer.", registry=REGISTRY
)
STATE_KEYS = Gauge(P + "state_store_keys", "Keys in the state store.", ["kind"], registry=REGISTRY)


def status_class(status: int) -> str:
    """200 → "2xx"; 0 (no answer) → "error"."""
    return f"{status // 100}xx" if status else "error"
