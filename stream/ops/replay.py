"""`klaviyo-stream dlq replay`: send chosen dead letters back through the pipeline.

`DeadLetterReader` and `ReplayFilter` are also what `dlq list` and `dlq show` read with.

Reads the dead-letter topic from its beginning up to the end it had when the replay started
(a consumer of its own, nothing committed, so the dead letters stay for the next replay),
keeps the records whose `dlq.*` headers match the filter (a reason substring, a time range of
the last attempt), and republishes each one's original key, value and headers (without the
`dlq.*` ones) to its original topic, or to `to_topic`. Every replayed record carries
`klaviyo-stream.backfill: 1`, so its event is sent with `backfill: true`: recorded at Klaviyo
without triggering flows, since customers must not get emails for something long past.
A replayed event that did reach Klaviyo earlier is refused there by its `unique_id`.

A dead letter of one account (a `dlq.account` header, written with an accounts file) is
replayed to that account only: the record carries `klaviyo-stream.account`, which routing
honours over its rules, so the accounts a fan-out record did reach do not get it again.
`--account NAME` chooses the dead letters of one account.

A deletion's dead letter written in HIPAA mode holds no identifier (its value is the redacted
call): it is replayed as a delete call naming only its erasure (`ERASURE_HEADER`), which the
service sends again from the erasure entry it kept (for `ERASURE_KEEP_SECONDS`), so no raw
identifier ever goes back through the dead-letter topic.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from stream.accounts.routing import REPLAY_HEADER
from stream.completion.deadletter import HEADER_PREFIX
from stream.core.errors import ConfigError, ReplayError
from stream.klaviyo.mapping import BACKFILL_HEADER, ERASURE_HEADER

Headers = list[tuple[str, str | bytes | None]]
REASON_HEADERS = ("stage", "error.class", "error.message", "klaviyo.code")



@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which dead letters to replay; an empty filter takes them all.

    `reason` is a case-insensitive substring of the failing stage, error class, error message
    or Klaviyo error code; `since`/`until` bound the last attempt time (Unix seconds);
    `account` is the account the dead letter was written for (`dlq.account`, exactly).
    """

    reason: str | None = None
    since: float | None = None
    until: float | None = None
    account: str | None = None

    def matches(self, dlq: dict[str, str]) -> bool:
        """True when a dead letter with these `dlq.*` headers (prefix removed) is wanted."""
        if self.account is not None and dlq.get("account") != self.account:
            return False
        if self.reason:
            wanted = self.reason.lower()
            if not any(wanted in dlq.get(name, "").lower() for name in REASON_HEADERS):
                return False
        if self.since is not None or self.until is not None:
            try:
                when = float(dlq.get("last.attempt.time", ""))
            except ValueError:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        return True


@dataclass
class ReplayResult:
    """Counts of one replay."""

    read: int = 0
    replayed: int = 0
    skipped: int = 0
    without_value: int = 0  # chosen, but too large to have been kept: see dlq.original.*


def parse_time(text: str) -> float:
    """`2026-07-15T10:00:00Z`, `2026-07-15` (UTC) or Unix seconds → Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"not a time: {text!r} (ISO-8601 or Unix seconds)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def split_headers(headers: Headers | dict[str, Any] | None) -> tuple[Headers, dict[str, str]]:
    """(the record's original headers, its `dlq.*` headers by name without the prefix)."""
    original: Headers = []
    dlq: dict[str, str] = {}
    pairs = list(headers.items()) if isinstance(headers, dict) else headers or []
    for name, value in pairs:
        if name.startswith(HEADER_PREFIX):
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
            dlq[name[len(HEADER_PREFIX) :]] = text
        else:
            original.append((name, value))
    return original, dlq


class DeadLetterReader:
    """Reads a dead-letter topic from its beginning up to the end it had when opened, with a
    consumer of its own (nothing committed, so the dead letters stay). Shared by `dlq replay`,
    `dlq list` and `dlq show`; `total` is known before the first record."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, timeout: float = 60.0) -> None:
        self.topic = topic
        self._timeout = timeout
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": f"klaviyo-stream-dlq-reader-{time.time_ns()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            self.ends = _ends(self._consumer, topic, timeout)
        except BaseException:
            self._consumer.close()
            raise
        self.total = sum(high - low for low, high in self.ends.values())

    def __iter__(self) -> Iterator[Message]:
        return _read(self._consumer, self.topic, self.ends, self._timeout)

    def record_at(self, partition: int, offset: int) -> Message | None:
        """The dead letter at `partition:offset`, or None when there is none (yet, or any more)."""
        low, high = self.ends.get(partition, (0, 0))
        if not low <= offset < high:
            return None
        self._consumer.assign([TopicPartition(self.topic, partition, offset)])
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            for message in self._consumer.consume(1, 0.5):
                if message.error() is None:
                    return message if message.offset() == offset else None
        raise ReplayError(f"no progress reading {self.topic} for {self._timeout:.0f} s")

    def close(self) -> None:
        """Close the consumer (it never joined a group; nothing to commit)."""
        self._consumer.close()

    def __enter__(self) -> DeadLetterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay(
    kafka_config: dict[str, Any],
    dlq_topic: str,
    selection: ReplayFilter,
    *,
    to_topic: str | None = None,
    dry_run: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    encode: Callable[[dict[str, Any]], bytes] | None = None,
) -> ReplayResult:
    """Replay the matching dead letters; returns once the broker acknowledged every one."""
    from tqdm import tqdm  # progress bar only where a person watches: the CLI

    result = ReplayResult()
    producer = None if dry_run else Producer({**kafka_config, "enable.idempotence": True})
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    with DeadLetterReader(kafka_config, dlq_topic, timeout) as reader, tqdm(
        total=reader.total, unit="rec", desc="replay", disable=not progress, file=sys.stderr
    ) as bar:
        for message in reader:
            result.read += 1
            bar.update(1)
            original, dlq = split_headers(message.headers())
            if not selection.matches(dlq):
                result.skipped += 1
                continue
            if "value.omitted" in dlq:
                result.without_value += 1
                continue
            target = to_topic or dlq.get("original.topic")
            if not target:
                raise ReplayError(
                    f"dead letter at offset {message.offset()} names no original topic; "
                    "use --to-topic"
                )
            result.replayed += 1
            if producer is not None:
                headers = replayed_headers(original, dlq)
                value = message.value()
                erasure = dlq.get("erasure")
                if erasure and "redacted" in dlq:  # no identifier in it: the entry has them
                    if encode is None:
                        raise ReplayError("a redacted deletion needs the encoder to replay")
                    value = encode(erasure_call(erasure, dlq))
                    headers.append((ERASURE_HEADER, erasure.encode()))
                _produce(producer, target, message, value, headers, on_delivery)
    if producer is not None:
        remaining = producer.flush(timeout)
        if remaining or failures:
            raise ReplayError(
                f"{remaining} replayed records unacknowledged; errors: {failures[:3]}"
            )
    return result


def replayed_headers(original: Headers, dlq: dict[str, str]) -> Headers:
    """A replayed record's headers: its own, marked as backfill and, when the dead letter was
    one account's, for that account only (a fan-out's other accounts had their copy)."""
    headers = [h for h in original if h[0] not in (BACKFILL_HEADER, REPLAY_HEADER)]
    headers.append((BACKFILL_HEADER, b"1"))
    if dlq.get("account"):
        headers.append((REPLAY_HEADER, dlq["account"].encode()))
    return headers


def _ends(consumer: Consumer, topic: str, timeout: float) -> dict[int, tuple[int, int]]:
    """Partition → (low, high) watermark of the dead-letter topic, now."""
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except Exception as exc:
        raise ReplayError(f"cannot read the metadata of {topic}: {exc}") from None
    if meta is None or meta.error is not None or not meta.partitions:
        raise ReplayError(f"dead-letter topic {topic} does not exist")
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        for p in meta.partitions
    }


def _read(
    consumer: Consumer, topic: str, ends: dict[int, tuple[int, int]], timeout: float
) -> Iterator[Message]:
    """Every record of `topic` below the ends measured at the start."""
    todo = {p: high for p, (low, high) in ends.items() if high > low}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
    idle_since = time.monotonic()
    while todo:
        messages = consumer.consume(500, 0.5)
        if not messages:
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= todo[tp.partition]:  # a gap (compaction) before the end
                    del todo[tp.partition]
            if todo and time.monotonic() - idle_since > timeout:
                raise ReplayError(f"no progress reading {topic} for {timeout:.0f} s")
        for message in messages:
            idle_since = time.monotonic()
            if message.error() is not None:
                continue
            partition, offset = message.partition(), message.offset()
            assert partition is not None and offset is not None
            end = todo.get(partition)
            if end is None or offset >= end:
                continue
            yield message
            if offset + 1 >= end:
                del todo[partition]


def erasure_call(erasure: str, dlq: dict[str, str]) -> dict[str, Any]:
    """The delete call that asks the service to send an erasure again from its entry."""
    when = datetime.fromtimestamp(float(dlq.get("first.attempt.time") or time.time()), UTC)
    return {
        "type": "delete", "messageId": erasure, "timestamp": when.isoformat(),
        "traits": {"erasure": erasure},  # names no one: the entry does (ERASURE_HEADER)
    }  # fmt: skip


def _produce(
    producer: Producer,
    topic: str,
    message: Message,
    value: bytes | None,
    headers: Headers,
    on_delivery: Any,
) -> None:
    while True:
        try:
            producer.produce(
                topic,
                value=value,
                key=message.key(),
                headers=headers,
                on_delivery=on_delivery,
            )
            break
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.1)
    producer.poll(0)
