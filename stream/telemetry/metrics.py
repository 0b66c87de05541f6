"""Prometheus metrics of every stage. Labels have bounded cardinality: never a person's id.

Names follow Prometheus conventions (snake_case, base units, `_total`, `_seconds`, `_bytes`).
All live in one registry so the service, tests and `/metrics` see the same series, with the
process (`process_*`) and platform (`python_info`) collectors and `klaviyo_stream_build_info`.
Counters expose no `_created` series (they double the series count for nothing we read).
"""

from __future__ import annotations

import platform
from importlib.metadata import version as package_version

import confluent_kafka
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from stream import __version__

disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
P = "klaviyo_stream_"

BUILD_INFO = Info(
    P + "build", "The running build: versions of the service and its clients.", registry=REGISTRY
)
BUILD_INFO.info(
    {
        "version": __version__,
        "python": platform.python_version(),
        "confluent_kafka": package_version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
    }
)

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
RECORDS_ROUTED = Counter(
    P + "records_routed_total",
    "Record copies routed to an account (ACCOUNTS_FILE), by how: topic, header, field, all,"
    " delete (to every account), replay (a dead letter replayed for it).",
    ["account", "via"],
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
IDENTITY_LINKS_REFUSED = Counter(
    P + "identity_links_refused_total",
    "Identifiers of a call left unlinked by the identity rules (a limit per person), by kind.",
    ["kind"],
    registry=REGISTRY,
)
FIELDS_DROPPED = Counter(
    P + "fields_dropped_total",
    "Invalid fields dropped from a call that was sent without them, by field and reason.",
    ["field", "reason"],
    registry=REGISTRY,
)
PROFILE_MERGES_REFUSED = Counter(
    P + "profile_merges_refused_total",
    "409 duplicates not merged: the other profile is not the same person in our graph.",
    registry=REGISTRY,
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
for _dependency in ("state store", "schema registry", "dead-letter topic"):
    DEPENDENCY_ERRORS.labels(_dependency)  # present at 0: an alert's rate() has data

# consent, lists and deletion
CONSENT_ACTIONS = Counter(
    P + "consent_actions_total",
    "Consent, list and deletion actions made from calls (each an item), by action.",
    ["action"],
    registry=REGISTRY,
)
CONSENT_OVERTAKEN = Counter(
    P + "consent_overtaken_total",
    "Consent or list changes not sent: the person has a newer one there (email, sms, list).",
    ["channel"],
    registry=REGISTRY,
)
FORGOTTEN = Counter(
    P + "forgotten_total",
    "What delete calls erased from the state store: persons, identifiers, held calls.",
    ["kind"],
    registry=REGISTRY,
)
RECORDS_TOMBSTONED = Counter(
    P + "records_tombstoned_total",
    "Records older than the deletion of a person they name: dropped, never sent.",
    registry=REGISTRY,
)
ITEMS_CANCELLED = Counter(
    P + "items_cancelled_total",
    "Items of a partition revoked past the drain bound: not attempted again (its next owner"
    " reads them), by kind.",
    ["kind"],
    registry=REGISTRY,
)
ACTIONS_AWAITING_PREVIOUS_OWNER = Gauge(
    P + "actions_awaiting_previous_owner",
    "Consent and deletion actions of a partition just assigned, waiting until the previous"
    " owner's last requests can no longer land.",
    registry=REGISTRY,
)
ERASURE_LEFT_WITH_OTHERS = Counter(
    P + "erasure_identifiers_left_total",
    "Identifiers a delete call named that belong to someone else: left with them, not deleted.",
    registry=REGISTRY,
)
DELETIONS = Counter(
    P + "deletions_total",
    "Klaviyo deletions by step: sent, resent (a profile reappeared), confirmed, not_confirmed.",
    ["result"],
    registry=REGISTRY,
)
for _result in ("sent", "resent", "confirmed", "not_confirmed"):
    DELETIONS.labels(_result)
DELETIONS_WAITING = Gauge(
    P + "deletions_waiting",
    "Deletions waiting for older work of the group to be answered, or for their turn.",
    registry=REGISTRY,
)
DELETION_OLDEST_WAIT = Gauge(
    P + "deletion_oldest_wait_seconds",
    "How long the oldest deletion waiting (or being confirmed) has been on its way.",
    registry=REGISTRY,
)
OPT_OUTS = Counter(
    P + "opt_outs_total",
    "Unsubscribes by how they ended: sent, superseded (a newer call), dead_lettered,"
    " person_deleted.",
    ["ending"],
    registry=REGISTRY,
)
for _ending in ("sent", "superseded", "dead_lettered", "person_deleted"):
    OPT_OUTS.labels(_ending)
STALE_SUBSCRIBES = Counter(
    P + "stale_subscribes_skipped_total",
    "Subscriptions not sent: Klaviyo holds a newer opt-out or suppression for the channel.",
    ["channel"],
    registry=REGISTRY,
)

# batch → deliver
REQUESTS = Counter(
    P + "requests_total",
    "Requests sent to Klaviyo (retries included), by answer.",
    ["endpoint", "status_class"],
    registry=REGISTRY,
)
BATCHES_SENT = REQUESTS  # the name deliver.py used before the rename (it counted requests)
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
    # past the request timeout (KLAVIYO_TIMEOUT_SECONDS, 30 s by default) and up to the retry
    # window (300 s): a request that times out lands in a bucket, not only in +Inf
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 120, 300),
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
RATE_SHARE = Gauge(
    P + "rate_share",
    "This replica's share of the account's Klaviyo quota (KLAVIYO_RATE_SHARE=auto: 1/members).",
    registry=REGISTRY,
)
PARKED_ITEMS = Gauge(
    P + "parked_items",
    "Items of an account kept back while Klaviyo refuses its key, fails or throttles it"
    " (ACCOUNTS_FILE; dead letters past PARK_MAX_SECONDS or PARK_MAX_ITEMS).",
    ["account"],
    registry=REGISTRY,
)
PARKED_OLDEST = Gauge(
    P + "parked_oldest_seconds",
    "How long an account's oldest parked item has been kept back (0: none).",
    ["account"],
    registry=REGISTRY,
)
IN_FLIGHT_REQUESTS = Gauge(
    P + "in_flight_requests", "Requests awaiting Klaviyo's answer.", registry=REGISTRY
)
ITEMS_WAITING = Gauge(
    P + "items_waiting",
    "Items batched but not yet sent, per kind (profile upserts parked behind one in flight too).",
    ["kind"],
    registry=REGISTRY,
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

# catalog (product topics → Klaviyo's catalog)
CATALOG_RESOURCES = Counter(
    P + "catalog_resources_total",
    "Catalog resource versions finished, by type (item, variant, category) and outcome"
    " (created, updated, deleted, gone, unchanged, superseded, dead_lettered).",
    ["type", "outcome"],
    registry=REGISTRY,
)
for _kind in ("item", "variant", "category"):
    CATALOG_RESOURCES.labels(_kind, "dead_lettered")  # present at 0: the first one alerts too
CATALOG_RECOVERED = Counter(
    P + "catalog_recovered_total",
    "Catalog resources sent again as the other action after Klaviyo refused a create (it"
    " existed) or an update (it did not), by type and refused action.",
    ["type", "refused"],
    registry=REGISTRY,
)
CATALOG_JOBS = Gauge(
    P + "catalog_jobs_in_progress",
    "Catalog bulk jobs sent and not yet seen complete by this replica.",
    registry=REGISTRY,
)
CATALOG_JOB_SECONDS = Histogram(
    P + "catalog_job_duration_seconds",
    "From a catalog bulk job's 202 to seeing it complete.",
    ["type", "action"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
CATALOG_PENDING_RECORDS = Gauge(
    P + "catalog_pending_records",
    "Catalog records consumed and not yet finished (bounded by CATALOG_MAX_PENDING_RECORDS).",
    registry=REGISTRY,
)

# operations
REVISION_RETIREMENT = Gauge(
    P + "klaviyo_revision_retirement_timestamp_seconds",
    "Unix time the pinned Klaviyo API revision stops being supported (two years after its date).",
    ["revision"],
    registry=REGISTRY,
)


def status_class(status: int) -> str:
    """200 → "2xx"; 0 (no answer) → "error"."""
    return f"{status // 100}xx" if status else "error"
