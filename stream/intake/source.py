"""What the service needs from Kafka: the consumer seam.

`KafkaConsumer` (`stream.intake.consume`) is the real one; tests run the whole service
in-process against an in-memory one (`tests/support/source.py`). A source is made for a
ledger and a drain callback (`SourceFactory`) and keeps the rebalance contract, in the manner
of aiokafka's `ConsumerRebalanceListener`: rebalances happen inside `fetch`, on the thread
that fetches, and while one runs nothing may block the event loop on the consumer (the loop
finishes the drained work meanwhile); an assignment starts a ledger generation per partition
(`Ledger.assign`); a revoke first calls `drain` with the partitions (unless `closing`), then
ends their generations (`Ledger.revoke`) and commits; a loss ends them without a commit.
Every fetch returns each message with its partition's generation as of the fetch
(`Ledger.stamp`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Message

from stream.completion.ledger import Generation, Ledger

TopicPartition = tuple[str, int]
Partitions = list[TopicPartition]
Drain = Callable[[Partitions], None]


class Source(Protocol):
    """A consumer-group member's Kafka side: fetch, pause/resume, store offsets, commit."""

    assigned: set[TopicPartition]  # the partitions this member owns now
    broker_reachable: bool  # False after every broker was reported down, until contact again
    rebalanced: bool  # set by every assignment change (the group's size may differ); reset by us
    closing: bool  # set before the final commit: revokes no longer drain

    async def fetch(
        self, max_records: int, timeout: float
    ) -> tuple[list[Message], list[Generation | None]]:
        """Up to `max_records` messages within `timeout` seconds, each with its generation."""
        ...

    @property
    def paused(self) -> bool: ...

    def pause(self) -> None:
        """Stop fetching from the event topics' partitions, from the next fetch on (membership
        stays)."""

    def resume(self) -> None:
        """Fetch again after `pause`, from the next fetch on."""

    @property
    def catalog_paused(self) -> bool: ...

    def pause_catalog(self, paused: bool) -> None:
        """Stop (or start again) fetching from the catalog topics' partitions only."""

    def store(self, topic: str, partition: int, next_offset: int) -> None:
        """Mark `next_offset` as the position to commit for one partition (never blocks: the
        revoke's commit and the next commit include it)."""

    async def commit(self) -> None:
        """Commit the stored offsets now."""

    async def close(self) -> None:
        """Leave the group (after the final commit)."""

    async def probe(self, timeout: float = 5.0) -> bool:
        """Prove contact with the cluster (an idle member fetches nothing to prove it)."""
        ...

    def group_size(self, timeout: float = 10.0) -> int | None:
        """The group's members as its coordinator sees them (blocking; None: unknown)."""

    async def lag(self) -> dict[TopicPartition, int]:
        """High watermark minus position per assigned partition."""
        ...

    async def committed_lag(self) -> dict[TopicPartition, int]:
        """High watermark minus the last committed offset per assigned partition."""
        ...


SourceFactory = Callable[[Ledger, Drain], Source]
"""Makes the source of one run for its ledger and its drain callback."""
