"""Liveness and readiness facts the service updates and `/healthz` and `/readyz` read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    """Mutable health state of one service process (written by the poll loop)."""

    stuck_after_seconds: float = 60.0
    stall_after_seconds: float = 600.0
    partitions_required: bool = True  # READY_WITHOUT_PARTITIONS turns it off (standbys)
    assigned_partitions: int = 0
    stalled_seconds: float = 0.0  # the longest a partition's offset has not moved while work waits
    broker_reachable: bool = False
    last_poll: float = field(default_factory=time.monotonic)
    stopping: bool = False

    waiting_for: str | None = None  # a dependency the loop is waiting out (the state store)

    def polled(self) -> None:
        """The poll loop calls this each turn: proof it is not stuck."""
        self.last_poll = time.monotonic()

    def waiting(self, dependency: str | None) -> None:
        """The loop waits for `dependency` (None: no longer): it is alive, not stuck (a restart
        would not bring the dependency back), and not ready."""
        self.waiting_for = dependency
        self.last_poll = time.monotonic()

    @property
    def alive(self) -> bool:
        """The process is running its loop."""
        return time.monotonic() - self.last_poll < self.stuck_after_seconds

    @property
    def stalled(self) -> bool:
        """A partition's offset has not moved for `stall_after_seconds` while records wait."""
        return self.stalled_seconds >= self.stall_after_seconds

    @property
    def ready(self) -> bool:
        """Assigned at least one partition, broker reachable, loop not stuck, no partition
        stalled, not stopping."""
        return (
            self.alive
            and self.broker_reachable
            and (self.assigned_partitions > 0 or not self.partitions_required)
            and not self.stalled
            and self.waiting_for is None
            and not self.stopping
        )
