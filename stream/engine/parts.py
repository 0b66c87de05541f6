"""The parts of one run of the service, built together once the event loop runs.

`Service.assemble` builds them, none missing; the per-record stages (`stream.engine.handle`),
the batches' outcomes (`stream.engine.outcomes`), the housekeeping and the fetch loop all work
on one `Parts`. What is Kafka's (the source, the ledger, the decoder, the dead-letter topic) is
shared; what is Klaviyo's is one `AccountParts` per account (`stream.accounts`): its state
store, processing, gate, send stage and delivery. Without an accounts file there is one, made
of the settings, and no router (every record is that account's).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from stream.accounts.routing import Router
from stream.catalog.stage import CatalogStage
from stream.completion.dedup import Deduplicator
from stream.completion.ledger import DeadLetterWriter, Ledger
from stream.core.calls import Record
from stream.core.settings import Settings
from stream.delivery.deliver import Deliverer
from stream.delivery.send import Sender
from stream.engine.gate import Gate
from stream.engine.parking import Parking
from stream.engine.process import Processor
from stream.identity.fence import Fence
from stream.intake.decode import Decoder
from stream.intake.source import Source
from stream.klaviyo.governor import Governor
from stream.state import StateStore
from stream.telemetry.health import Health

log = logging.getLogger(__name__)

STATE = "state store"  # the dependency's name in waits and metrics


@dataclass
class RunResult:
    """What a run did, for the CLI's last line and for tests."""

    consumed: int = 0
    dead_lettered: int = 0


class Stop:
    """How a run ends: asked to (a signal), or a fatal error no record can get past (a
    refused API key), which stops it without committing past what it could not send."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()  # what dependency waits listen to
        self.fatal: BaseException | None = None

    def ask(self) -> None:
        """Finish gracefully (signal-safe)."""
        self.asked.set()

    def fail(self, exc: BaseException) -> None:
        """Stop because of `exc` (the first one is kept and raised by `run`)."""
        if self.fatal is None:
            log.error("stopping", extra={"error": str(exc)})
            self.fatal = exc
        self.asked.set()

    @property
    def stopping(self) -> bool:
        return self.asked.is_set()


@dataclass(eq=False)
class AccountParts:
    """One Klaviyo account's stages, kept apart from every other account's."""

    name: str
    settings: Settings  # the account's own (`Account.settings`): key, revision, mode, rules
    store: StateStore
    dedup: Deduplicator
    processor: Processor
    fence: Fence | None  # None without deletions (no erasure)
    governor: Governor
    deliverer: Deliverer
    sender: Sender
    gate: Gate
    catalog: CatalogStage | None  # None without CATALOG_TOPICS
    parking: Parking | None = None  # None without an accounts file: a refused key stops


@dataclass(eq=False)
class Parts:
    """Everything one run works with."""

    settings: Settings
    health: Health
    stop: Stop
    result: RunResult
    decoder: Decoder
    ledger: Ledger
    source: Source
    dead_letters: DeadLetterWriter
    accounts: dict[str, AccountParts]  # in the accounts file's order
    router: Router | None  # None: one account without a file, every record its own

    @property
    def only(self) -> AccountParts:
        """The first account: the only one without an accounts file."""
        return next(iter(self.accounts.values()))

    def account_of(self, record: Record) -> AccountParts:
        """The account a routed record (or copy) goes to (unrouted: the only account)."""
        name = record.account
        return self.only if name is None else self.accounts[name]

    # the only account's parts, by the names a single-account run always had (tests) ---------

    @property
    def store(self) -> StateStore:
        return self.only.store

    @property
    def processor(self) -> Processor:
        return self.only.processor

    @property
    def sender(self) -> Sender:
        return self.only.sender

    @property
    def gate(self) -> Gate:
        return self.only.gate

    @property
    def catalogs(self) -> list[CatalogStage]:
        """Every account's catalog stage (none without CATALOG_TOPICS)."""
        return [a.catalog for a in self.accounts.values() if a.catalog is not None]

    @property
    def pending(self) -> int:
        """Records of the event path begun and not finished (the catalog's are its own)."""
        catalog = sum(c.pending for c in self.catalogs)
        return max(0, self.ledger.pending - catalog)
