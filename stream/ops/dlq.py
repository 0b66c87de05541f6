"""`dlq list` and `dlq show`: what is in the dead-letter topic, without replaying anything.

Reading and filtering are `stream.ops.replay`'s (`DeadLetterReader`, `ReplayFilter`): the same
records `dlq replay` would choose are the ones counted here. In HIPAA mode a dead letter's
error message and decoded call are shown only through the HIPAA allow-lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Message

from stream.completion.deadletter import WITHHELD
from stream.core.errors import ConfigError, StreamError
from stream.ops.replay import DeadLetterReader, ReplayFilter, split_headers


@dataclass
class Group:
    """Dead letters of one (account, stage, reason): how many, and when the newest and oldest
    failed. `account` is "" for dead letters written without an accounts file."""

    stage: str
    reason: str
    account: str = ""
    count: int = 0
    newest: float | None = None
    oldest: float | None = None


def list_dead_letters(
    kafka_config: dict[str, Any], topic: str, selection: ReplayFilter, timeout: float = 60.0
) -> tuple[int, list[Group]]:
    """(records read, groups by account, stage and error class, newest first)."""
    groups: dict[tuple[str, str, str], Group] = {}
    read = 0
    with DeadLetterReader(kafka_config, topic, timeout) as reader:
        for message in reader:
            read += 1
            _original, dlq = split_headers(message.headers())
            if not selection.matches(dlq):
                continue
            key = (dlq.get("stage", "?"), dlq.get("error.class", "?"), dlq.get("account", ""))
            group = groups.setdefault(key, Group(*key))
            group.count += 1
            when = _float(dlq.get("last.attempt.time"))
            if when is not None:
                group.newest = when if group.newest is None else max(group.newest, when)
                group.oldest = when if group.oldest is None else min(group.oldest, when)
    ordered = sorted(
        groups.values(), key=lambda g: (g.account, -(g.newest or 0.0), g.stage, g.reason)
    )
    return read, ordered


def format_list(topic: str, read: int, groups: list[Group]) -> str:
    """The table `dlq list` prints; an account column (grouped by account) when any dead
    letter names one."""
    chosen = sum(g.count for g in groups)
    lines = [f"{chosen} dead letters chosen of {read} in {topic}"]
    if groups:
        accounts = any(g.account for g in groups)
        head = ("account",) if accounts else ()
        rows = [(*head, "stage", "reason", "count", "newest", "oldest")] + [
            ((g.account or "-",) if accounts else ())
            + (g.stage, g.reason, str(g.count), _iso(g.newest), _iso(g.oldest))
            for g in groups
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
    return "\n".join(lines)


def groups_json(topic: str, read: int, groups: list[Group]) -> dict[str, Any]:
    """`dlq list --json`."""
    return {"topic": topic, "read": read, "groups": [asdict(g) for g in groups]}


def parse_position(text: str) -> tuple[int, int]:
    """`3:1042` → (partition 3, offset 1042)."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not PARTITION:OFFSET (e.g. 0:42)")
    return int(partition), int(offset)


def show_dead_letter(
    kafka_config: dict[str, Any],
    topic: str,
    partition: int,
    offset: int,
    decode: Callable[[bytes], Any],
    hipaa: Callable[[Any], Any] | None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """One dead letter: its position, key, `dlq.*` and original headers, and its decoded call.

    `decode` turns the original value into a call; with `hipaa` (HIPAA mode) the call is
    shown as the allow-lists shape it, the error message is withheld and original headers
    are not shown. A value the dead-letter writer already redacted is shown as it is."""
    with DeadLetterReader(kafka_config, topic, timeout) as reader:
        message = reader.record_at(partition, offset)
    if message is None:
        raise ConfigError(f"{topic} has no dead letter at {partition}:{offset}")
    original, dlq = split_headers(message.headers())
    shown: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _text(message.key()) if hipaa is None else None,
        "dlq": dlq,
        "headers": {name: _text(value) for name, value in original} if hipaa is None else {},
    }
    if hipaa is not None and "error.message" in dlq:
        dlq["error.message"] = WITHHELD
    shown["call"] = _call(message, dlq, decode, hipaa)
    return shown


def _call(
    message: Message,
    dlq: dict[str, str],
    decode: Callable[[bytes], Any],
    hipaa: Callable[[Any], Any] | None,
) -> Any:
    value = message.value()
    if not value:
        return None
    if dlq.get("redacted"):  # written redacted (HIPAA): already the allow-listed call as JSON
        return orjson.loads(value)
    try:
        call = decode(value)
    except StreamError as exc:
        return {"undecodable": "value withheld" if hipaa is not None else str(exc)}
    if hipaa is not None:
        from stream.rules.hipaa import redacted_record

        return orjson.loads(redacted_record(hipaa(call)))
    return {k: v for k, v in asdict(call).items() if v not in (None, {}, [])}


def format_show(shown: dict[str, Any]) -> str:
    """`dlq show`: the record as indented JSON (it is data, not a sentence)."""
    return orjson.dumps(shown, option=orjson.OPT_INDENT_2, default=str).decode()


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _iso(when: float | None) -> str:
    if when is None:
        return "-"
    return datetime.fromtimestamp(when, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value
