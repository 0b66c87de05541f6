"""A frozen clock for the governor and the send stage: time moves only by their sleeps."""

from __future__ import annotations


class FakeClock:
    """Time that moves only when its owner sleeps; every sleep passes at once and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
