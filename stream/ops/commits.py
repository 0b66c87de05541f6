"""When did a consumer group last commit each partition? Kafka's own record of it.

The group coordinator writes every offset commit to one partition of `__consumer_offsets`
(`abs(javaHashCode(group)) % partitions`). Its record key (versions 0 and 1) is
`int16 version, string group, string topic, int32 partition`; the record's timestamp is the
commit time. Reading the tail of that partition gives the latest commit per partition, as the
broker saw it. Needs read access to `__consumer_offsets`; without it the answer is unknown.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

OFFSETS_TOPIC = "__consumer_offsets"
TAIL_RECORDS = 20_000  # commits of every group share the partition; the newest are enough


def java_string_hash(text: str) -> int:
    """Java's `String.hashCode()` as an unsigned 32-bit value (over UTF-16 code units)."""
    units = text.encode("utf-16-be")
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + ((units[i] << 8) | units[i + 1])) & 0xFFFFFFFF
    return h


def coordinator_partition(group: str, partitions: int) -> int:
    """The `__consumer_offsets` partition holding `group`'s commits.

    Kafka's `Utils.abs(group.hashCode()) % partitions`, where `Utils.abs` is `Math.abs` of the
    signed hash (and 0 for `Integer.MIN_VALUE`), not the hash with its sign bit masked off."""
    h = java_string_hash(group)
    signed = h - (1 << 32) if h & 0x80000000 else h
    return (0 if signed == -(1 << 31) else abs(signed)) % partitions


def parse_commit_key(key: bytes) -> tuple[str, str, int] | None:
    """(group, topic, partition) of an offset-commit record key; None for other records."""
    if len(key) < 2:
        return None
    (version,) = struct.unpack_from(">h", key, 0)
    if version not in (0, 1):
        return None
    try:
        pos = 2
        parts: list[str] = []
        for _ in range(2):
            (size,) = struct.unpack_from(">h", key, pos)
            pos += 2
            parts.append(key[pos : pos + size].decode())
            pos += size
        (partition,) = struct.unpack_from(">i", key, pos)
    except (struct.error, UnicodeDecodeError):
        return None
    return parts[0], parts[1], partition


def last_commit_times(
    kafka_config: dict[str, Any],
    group: str,
    timeout: float = 10.0,
    wanted: set[tuple[str, int]] | None = None,
) -> dict[tuple[str, int], float] | None:
    """(topic, partition) → Unix time of the group's latest commit; None when unreadable.

    The newest records come first: windows read back from the partition's end, each twice the
    last, until every `wanted` partition is found or `TAIL_RECORDS` are read (on a busy
    coordinator partition, the last commit of a group is near its end)."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"klaviyo-stream-status-{time.time_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",  # every commit record, at once
        }
    )
    try:
        meta = consumer.list_topics(OFFSETS_TOPIC, timeout=timeout).topics.get(OFFSETS_TOPIC)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        tp = TopicPartition(OFFSETS_TOPIC, coordinator_partition(group, len(meta.partitions)))
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
        found: dict[tuple[str, int], float] = {}
        deadline = time.monotonic() + timeout
        end, window = high, 1_000
        while end > low and high - end < TAIL_RECORDS and time.monotonic() < deadline:
            begin = max(low, end - window)
            older = _read_window(consumer, tp, begin, end, group, deadline)
            for key, when in older.items():
                found.setdefault(key, when)  # a newer window's commit wins
            if wanted is not None and wanted <= set(found):
                break
            end, window = begin, window * 2
        return found
    except KafkaException:
        return None
    finally:
        consumer.close()


def _read_window(
    consumer: Consumer, tp: TopicPartition, begin: int, end: int, group: str, deadline: float
) -> dict[tuple[str, int], float]:
    """The group's latest commit per partition among the records [begin, end)."""
    found: dict[tuple[str, int], float] = {}
    consumer.assign([TopicPartition(tp.topic, tp.partition, begin)])
    while time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF and (message.offset() or 0) >= end:
                    return found  # read to the end (not an end reached in an earlier window)
                continue
            offset = message.offset() or 0
            if offset < begin:
                continue  # fetched for the window before this one
            if offset >= end:
                return found
            parsed = parse_commit_key(message.key() or b"")
            if parsed is not None and parsed[0] == group:
                key = (parsed[1], parsed[2])
                if message.value() is None:  # tombstone: the offset was deleted
                    found.pop(key, None)
                else:
                    found[key] = message.timestamp()[1] / 1000
            if offset >= end - 1:
                return found
    return found
