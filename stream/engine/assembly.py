"""Each account's parts: what it keeps across runs of the service (`AccountState`: its
settings, state store, dedup window, processing and fence, built at start) and what one run
adds to them (`account_parts`: its send stage, gate, delivery, catalog stage and, with an
accounts file, its parking). Without an accounts file there is one account, made of the
settings, built exactly as the single-account service always built it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stream.accounts.connections import AccountLinks
from stream.completion.dedup import Deduplicator
from stream.completion.ledger import Ledger
from stream.core.errors import StreamError
from stream.core.retry import Waiting
from stream.core.settings import Settings
from stream.delivery.actions import ActionBatch
from stream.delivery.batch import Batch, Sendable
from stream.delivery.deliver import Deliverer
from stream.delivery.send import Sender
from stream.engine.gate import Gate
from stream.engine.outcomes import Outcomes
from stream.engine.parking import Parking
from stream.engine.parts import AccountParts, Stop
from stream.engine.pipeline import build_catalog, build_governor, build_processor
from stream.engine.process import Processor
from stream.identity.fence import Fence
from stream.klaviyo.client import KlaviyoClient
from stream.rules.transform import Transformer
from stream.state import StateStore


@dataclass(eq=False)
class AccountState:
    """What one account keeps across runs of the service: its settings, state store, dedup
    window, processing and fence (its run's send stage, gate and delivery: `account_parts`)."""

    name: str
    settings: Settings
    store: StateStore
    dedup: Deduplicator
    transformer: Transformer
    processor: Processor
    fence: Fence | None


def account_state(
    name: str,
    own: Settings,
    store: StateStore,
    transformer: Transformer,
    account: str | None,
) -> AccountState:
    """An account's processing over its store, built from its settings and `transformer`
    (its rule files, checked by the caller); `account` its name on its records (None: the
    single account of a deployment without an accounts file)."""
    processor = build_processor(own, store, transformer, account)
    erasure = processor.erasure
    fence = None if erasure is None else Fence(
        store, erasure,
        request_timeout=own.klaviyo_timeout_seconds,
        liveness=own.replica_liveness_seconds,
    )  # fmt: skip
    if fence is not None:
        store.lease_owner = fence.replica  # released held calls follow us
    return AccountState(name, own, store, Deduplicator(store), transformer, processor, fence)


def account_parts(
    state: AccountState,
    links: KlaviyoClient | AccountLinks,
    ledger: Ledger,
    outcomes: Mapping[str, Outcomes],
    *,
    stop: Stop,
    waiting: Waiting,
    parked: bool,
) -> AccountParts:
    """One account's send stage, gate and delivery over its client and governor (`links`:
    every account's; a bare client: the single account's); its batches go to
    `outcomes[name]`, made once the run's parts are. `parked`: its trouble parks its items
    (an accounts file) instead of stopping the service."""
    own, name = state.settings, state.name
    if isinstance(links, AccountLinks):
        client, governor = links[name].client, links[name].governor
    else:
        client, governor = links, build_governor(own)
    client_mode = own.klaviyo_mode == "client"

    async def deliver(batch: Batch | ActionBatch) -> None:
        await outcomes[name].deliver(batch)

    async def expire(items: Sequence[Sendable], error: StreamError) -> None:
        await outcomes[name].expire(items, error)

    def cancel(items: Sequence[Sendable]) -> None:
        outcomes[name].cancel(items)

    parking = None if not parked else Parking(
        name, deliver, expire, cancel,
        max_seconds=own.park_max_seconds, max_records=own.park_max_items,
        max_in_flight=own.klaviyo_max_in_flight, in_flight=lambda: sender.in_flight,
    )  # fmt: skip
    deliverer = Deliverer(
        client,
        max_in_flight=own.klaviyo_max_in_flight,
        client_mode=client_mode,
        governor=governor,
        same_person=state.processor.identity.same_person,
        confirm_rounds=own.deletion_confirm_rounds,
        stale_subscribe_seconds=own.stale_subscribe_seconds,
        watch=parking,
    )
    sender = Sender(
        governor,
        deliver,
        max_events=own.batch_max_events,
        max_profiles=own.batch_max_profiles,
        linger_seconds=own.batch_linger_ms / 1000,
        max_in_flight=own.klaviyo_max_in_flight,
        client_mode=client_mode,
        hold=parking,
    )
    # consent, list and deletion actions reach the send stage through the gate: in order
    # per person, each after what it follows (`stream.engine.gate`)
    gate = Gate(
        sender.add,
        erasure=state.processor.erasure,
        fence=state.fence,
        settle_seconds=own.deletion_settle_seconds,
        stop=stop.asked,
    )
    catalog = build_catalog(
        own, state.store, client, ledger, governor, fatal=stop.fail, waiting=waiting,
    )  # fmt: skip
    return AccountParts(
        name=name,
        settings=own,
        store=state.store,
        dedup=state.dedup,
        processor=state.processor,
        fence=state.fence,
        governor=governor,
        deliverer=deliverer,
        sender=sender,
        gate=gate,
        catalog=catalog,
        parking=parking,
    )
