"""The parts of one run of the service, built together once the event loop runs.

`Service.assemble` builds them, none missing; the per-record stages (`stream.engine.handle`),
the batches' outcomes (`stream.engine.outcomes`), the housekeeping and the fetch loop all work
on one `Parts`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from stream.catalog.stage import CatalogStage
from stream.completion.dedup import Deduplicator
from stream.completion.ledger import DeadLetterWriter, Ledger
from stream.core.settings import Settings
from stream.delivery.deliver import Deliverer
from stream.delivery.send import Sender
from stream.engine.gate import Gate
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
class Parts:
    """Everything one run works with."""

    settings: Settings
    health: Health
    stop: Stop
    result: RunResult
    store: StateStore
    dedup: Deduplicator
    decoder: Decoder
    processor: Processor
    fence: Fence | None  # None without deletions (no erasure)
    ledger: Ledger
    source: Source
    dead_letters: DeadLetterWriter
    deliverer: Deliverer
    governor: Governor
    sender: Sender
    gate: Gate
    catalog: CatalogStage | None  # None without CATALOG_TOPICS

    @property
    def pending(self) -> int:
        """Records of the event path begun and not finished (the catalog's are its own)."""
        catalog = self.catalog.pending if self.catalog is not None else 0
        return self.ledger.pending - catalog
