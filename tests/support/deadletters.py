"""The dead-letter topic's contract in memory: what the ledger wrote, and outages on demand."""

from __future__ import annotations

from stream.completion.deadletter import DeadLetter
from stream.core.errors import DeadLetterUnavailable


class DeadLetterSink:
    """Acknowledges every write, except the next `failures` ones (a broker outage)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.failures = 0

    async def send(self, letter: DeadLetter) -> None:
        if self.failures:
            self.failures -= 1
            raise DeadLetterUnavailable("broker down")
        self.letters.append(letter)

    def close(self, timeout: float = 30.0) -> None:
        pass

    @property
    def reasons(self) -> list[str]:
        """Each letter as `stage: error`."""
        return [f"{letter.stage}: {letter.error}" for letter in self.letters]
