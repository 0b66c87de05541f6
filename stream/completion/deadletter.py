"""Dead-letter topic: records we cannot deliver, with the reason, never silently lost.

Each dead letter keeps the original key, value and headers and adds error-context headers in
the style of Kafka Connect (`dlq.*`); a deletion's names its erasure (`dlq.erasure`), so a
replay can send it again from the erasure entry even when HIPAA mode wrote the dead letter
without the identifiers; one account's copy of a record names its account (`dlq.account`, so
`dlq replay --account` sends it to that account only) and is redacted as that account's HIPAA
mode says (a fan-out spanning HIPAA accounts: as the HIPAA account's, `Record.redact_as`).
`send` resolves only once the broker has the record, so
the ledger can move the offset past it safely, and raises `DeadLetterUnavailable` when the
broker did not take it (the ledger tries again). Too large for the topic: written without the
value, then also without the original headers. Messages never contain the API key: errors are
built without request headers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream.core.calls import Record
from stream.core.errors import DeadLetterUnavailable, KlaviyoError

HEADER_PREFIX = "dlq."
WITHHELD = "message withheld (HIPAA mode); see dlq.error.class and dlq.klaviyo.code"

Redactor = Callable[[Record], bytes | None]
"""HIPAA mode: the value to write instead of the original record (None: no value)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record we cannot send, and why: the stage that gave up, the error, how many tries
    it took since when, and the item of the record it names (`subscribe email`, `line 2`)."""

    record: Record
    error: BaseException
    stage: str
    attempts: int = 1
    first_attempt: float = field(default_factory=time.time)
    item: str | None = None

    @classmethod
    def of(
        cls, record: Record, error: BaseException, stage: str, item: str | None = None
    ) -> DeadLetter:
        """A dead letter whose tries are the error's own (a Klaviyo error counts them)."""
        if isinstance(error, KlaviyoError):
            return cls(
                record, error, stage, error.attempts, error.first_attempt or time.time(), item
            )
        return cls(record, error, stage, item=item)

    def headers(self, withhold_message: bool = False) -> list[tuple[str, str | bytes | None]]:
        """The `dlq.*` headers that explain why a record is here (HIPAA: without the message)."""
        source, error, item = self.record, self.error, self.item
        now = time.time()
        headers = {
            "stage": self.stage,
            "error.class": type(error).__name__,
            "error.message": WITHHELD if withhold_message else str(error)[:2000],
            "original.topic": source.topic,
            "original.partition": str(source.partition),
            "original.offset": str(source.offset),
            "attempts": str(self.attempts),
            "first.attempt.time": str(self.first_attempt),
            "last.attempt.time": str(now),
        }
        if source.account is not None:
            headers["account"] = source.account
        if item:
            headers["item"] = item
            if item.startswith("deletion") and source.message_id:  # `dlq replay` reopens it
                headers["erasure"] = source.message_id
        if isinstance(error, KlaviyoError):
            if error.code:
                headers["klaviyo.code"] = error.code
            if error.pointers:
                headers["klaviyo.pointer"] = ",".join(error.pointers)[:2000]
        return [(HEADER_PREFIX + k, v.encode()) for k, v in headers.items()]


class DeadLetters:
    """An idempotent producer to the dead-letter topic, polled on its own thread."""

    def __init__(
        self,
        producer_config: dict[str, Any],
        topic: str,
        redactor: Redactor | None = None,
        redactors: Mapping[str, Redactor | None] | None = None,
        unredacted_topics: frozenset[str] = frozenset(),
    ) -> None:
        self.topic = topic
        self._redactor = redactor  # a record of no account (or of the single account)
        self._redactors = redactors or {}  # account -> its redaction (None: not HIPAA)
        # records that are about products, not people (the catalog topics): written as they
        # are even in HIPAA mode, so that `dlq replay` can send them again
        self._unredacted = unredacted_topics
        self._producer = Producer({**producer_config, "enable.idempotence": True, "linger.ms": 20})
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="dlq-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def send(self, letter: DeadLetter) -> None:
        """Write one dead letter and wait until the broker acknowledged it.

        Too large for the dead-letter topic: written again without the value
        (`dlq.value.omitted` says why), then without the original headers too
        (`dlq.headers.omitted`); the `dlq.original.*` headers still point at the record.
        Raises `DeadLetterUnavailable` when the broker did not take it.
        """
        source = letter.record
        redactor = self.redactor_of(source)
        redacted = redactor is not None
        dlq = letter.headers(withhold_message=redacted)
        original = [] if redacted else list(source.headers or [])
        key, value = source.key, source.value
        if redactor is not None:  # HIPAA: no original key, value or headers
            key, value = None, redactor(source)
            dlq.append(("dlq.redacted", b"hipaa"))
        refused = await self._write(key, value, original + dlq)
        if refused is None:
            return
        omitted = f"{len(value or b'')} bytes, too large for {self.topic}: {refused}"
        dlq.append(("dlq.value.omitted", omitted.encode()))
        refused = await self._write(key, None, original + dlq)
        if refused is None:
            return
        dlq.append(("dlq.headers.omitted", f"{len(original)} original headers".encode()))
        refused = await self._write(None, None, dlq)
        if refused is not None:
            raise DeadLetterUnavailable(f"dead letter refused by {self.topic}: {refused}")

    def redactor_of(self, record: Record) -> Redactor | None:
        """How `record`'s dead letter is redacted (None: written as it came)."""
        if record.topic in self._unredacted:
            return None
        account = record.redact_as or record.account
        if account is None or account not in self._redactors:
            return self._redactor
        return self._redactors[account]

    async def _write(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, Any]]
    ) -> str | None:
        """Produce and await the broker's ack; the reason when the record is too large (None:
        written). Raises `DeadLetterUnavailable` for any other failure."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(_resolve, done, err)

        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: let the poller drain it
                await asyncio.sleep(0.05)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    return str(exc.args[0].str())
                raise DeadLetterUnavailable(f"dead-letter write failed: {exc}") from None
        return await done

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued and stop the poller."""
        self._stop.set()
        self._poller.join()
        self._producer.flush(timeout)


def _resolve(future: asyncio.Future[str | None], err: KafkaError | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    elif err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        future.set_result(str(err.str()))
    else:
        future.set_exception(DeadLetterUnavailable(f"dead-letter write failed: {err.str()}"))
