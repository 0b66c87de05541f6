"""One factory for the pipeline's parts, so `run` and `test-event` build them alike.

Everything here is decided by the settings alone: the routing, transformation and HIPAA
rules (checked now: a mistake stops the start with one line), the consent rules (checked
against the connection mode too), the identity resolver and the erasure over a state store,
the Klaviyo client and its rate-limit governor, the dead-letter writer, and the catalog stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stream.catalog.debezium import load_mapping
from stream.catalog.decode import CatalogDecoder
from stream.catalog.stage import CatalogStage
from stream.completion.deadletter import DeadLetters, Redactor
from stream.completion.ledger import Ledger
from stream.core.clients import kafka_client_config, schema_registry_config
from stream.core.retry import Waiting
from stream.core.settings import Settings
from stream.delivery.deliver import Deliverer
from stream.engine.process import Processor
from stream.identity.erasure import Erasure
from stream.identity.resolver import IdentityResolver
from stream.intake.decode import Decoder
from stream.klaviyo.catalog import MAX_JOBS_IN_PROGRESS
from stream.klaviyo.client import KlaviyoClient
from stream.klaviyo.governor import Governor
from stream.rules.consent import ConsentRules, check_client_mode, load_consent_rules
from stream.rules.hipaa import dead_letter_redactor
from stream.rules.route import router_from_settings
from stream.rules.transform import Transformer, transformer_from_settings
from stream.state import StateStore
from stream.state.rules import Limits


def build_processor(
    settings: Settings,
    store: StateStore,
    transformer: Transformer | None = None,
    account: str | None = None,
) -> Processor:
    """Route → transform (rules, then HIPAA) → identity → map, as the settings describe (an
    account's: `Account.settings`, its own store, `account` its name)."""
    identity = IdentityResolver(
        store,
        email_first=settings.use_email_as_identifier,
        cache_seconds=settings.identity_cache_seconds,
        max_skew=settings.max_clock_skew_seconds,
    )
    return Processor(
        router_from_settings(settings),
        identity,
        settings.phone_default_region,
        transformer if transformer is not None else transformer_from_settings(settings),
        settings.ecommerce_metrics,
        consent_rules(settings),
        Erasure(
            store,
            identity,
            max_skew=settings.max_clock_skew_seconds,
            keep_failed=settings.erasure_keep_seconds,
        ),  # fmt: skip
        settings.klaviyo_mode == "client",
        settings.consent_custom_source,
        hold_redacted=settings.hipaa_mode and not settings.hipaa_dlq_keep_original,
        max_skew=settings.max_clock_skew_seconds,
        anonymous_profiles=settings.expired_anonymous == "send",
        back_in_stock_event=settings.back_in_stock_event,
        account=account,
    )


def consent_rules(settings: Settings) -> ConsentRules:
    """The consent rules file's rules (none without one), refused in client mode when they ask
    more than subscriptions to a list."""
    if not settings.consent_file:
        return ConsentRules()
    rules = load_consent_rules(settings.consent_file)
    if settings.klaviyo_mode == "client":
        check_client_mode(rules, settings.consent_file)
    return rules


def identity_limits(settings: Settings) -> Limits:
    """Values of each identifier kind one person may hold (`stream.state.rules`)."""
    return Limits(
        email=settings.identity_emails_per_person, phone=settings.identity_phones_per_person
    )


def build_client(settings: Settings, **overrides: Any) -> KlaviyoClient:
    """The Klaviyo client: server mode with the private key, client mode with the public key."""
    options: dict[str, Any] = {
        "timeout": settings.klaviyo_timeout_seconds,
        "max_connections": settings.klaviyo_max_connections,
        "public_key": settings.klaviyo_public_key if settings.klaviyo_mode == "client" else None,
    }
    options.update(overrides)
    return KlaviyoClient(
        settings.klaviyo_base_url, settings.klaviyo_api_key, settings.klaviyo_revision, **options
    )


def build_governor(settings: Settings) -> Governor:
    """Klaviyo's rate limits times this replica's share (none against an unlimited sandbox)."""
    return Governor(
        None if settings.klaviyo_rate_governor else {},
        # auto: the whole quota until the group's size is known (the service asks at once)
        share=1.0 if settings.klaviyo_rate_share == "auto" else settings.klaviyo_rate_share,
        time_scale=settings.klaviyo_rate_time_scale,
    )


def build_dead_letters(
    settings: Settings,
    decoder: Decoder,
    transformer: Transformer,
    accounts: Mapping[str, tuple[Settings, Transformer]] | None = None,
) -> DeadLetters:
    """The dead-letter writer; in HIPAA mode it writes a redacted copy of a call unless told
    otherwise (catalog records hold products, not people: written as they are). `accounts`:
    each account's settings and transformer, for its records' dead letters (a record of no
    account is redacted as the global settings say)."""

    def redactor(own: Settings, shape: Transformer) -> Redactor | None:
        redact = own.hipaa_mode and not settings.hipaa_dlq_keep_original
        return dead_letter_redactor(decoder.decode, shape) if redact else None

    return DeadLetters(
        kafka_client_config(settings),
        settings.dlq_topic,
        redactor(settings, transformer),
        {name: redactor(*own) for name, own in (accounts or {}).items()},
        unredacted_topics=frozenset(settings.catalog_topics),
    )


def build_catalog(
    settings: Settings,
    store: StateStore,
    client: KlaviyoClient,
    ledger: Ledger,
    governor: Governor,
    *,
    fatal: Callable[[BaseException], None],
    waiting: Waiting | None = None,
) -> CatalogStage | None:
    """The catalog stage for `CATALOG_TOPICS` (None without any): its decoder (the registry
    and the Debezium column mapping from the settings), its bounds, its share of the account's
    500 jobs in progress (the governor's share, which `auto` keeps current), and requests paced
    by the one governor but in flight under a bound of their own (never taking the events')."""
    if not settings.catalog_topics:
        return None
    registry = None
    config = schema_registry_config(settings)
    if config is not None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient.new_client(config)
    decoder = CatalogDecoder(registry, load_mapping(settings.catalog_mapping_file))
    most = min(settings.catalog_max_jobs_in_progress, MAX_JOBS_IN_PROGRESS)
    request = Deliverer(client, max_in_flight=settings.klaviyo_max_in_flight, governor=governor)
    return CatalogStage(
        store,
        request.request,
        ledger,
        decoder,
        max_pending=settings.catalog_max_pending_records,
        linger_seconds=settings.catalog_linger_ms / 1000,
        max_jobs=lambda: max(1, int(most * governor.share)),
        dependency_wait=settings.catalog_dependency_wait_seconds,
        time_scale=settings.klaviyo_rate_time_scale,
        pace=governor.delay,
        fatal=fatal,
        waiting=waiting,
    )
