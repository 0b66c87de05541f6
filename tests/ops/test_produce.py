"""`produce`: bad lines reported by number while the rest is published; nothing left unflushed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.cli import main
from stream.core.calls import Call
from stream.core.errors import RecordError
from stream.intake.decode import LocalDecoder
from stream.ops.produce import Encoder, publish, publish_file
from tests.support import read_topic

NOW = "2026-03-01T10:00:00Z"


def segment(call_type: str, n: int, **fields: Any) -> dict[str, Any]:
    return {"type": call_type, "messageId": f"p-{n}", "timestamp": NOW, "userId": "u-1", **fields}


LINES: list[Any] = [
    segment("identify", 1, traits={"email": "ann@example.com"}),  # line 1
    segment("screen", 2, name="Home", properties=None),  # 2: null properties are fine
    "{not json",  # 3
    {"type": "track", "userId": "u-1", "event": "Filled"},  # 4: no messageId, no timestamp
    "",  # 5: blank, skipped
    segment("forget", 6),  # 6: not a call type we know ("delete" is one: an erasure)
    segment("track", 7, event=""),  # 7: the decoder would refuse it
    segment("group", 8, groupId="acme", traits={"name": "Acme"}),  # 8
    segment("page", 9, integrations={"Klaviyo": {"unset": 3}}),  # 9: bad per-call option
    [1, 2],  # 10: not an object
    segment("alias", 11, previousId="anon-1"),  # 11
    segment("track", 12, event="Order Completed", properties={"total": 1}),  # 12
]
REFUSED = {3: "not JSON", 6: "unknown call type 'forget'", 7: "needs an 'event' name",
           9: "integrations.Klaviyo.unset", 10: "not a JSON object"}  # fmt: skip


def write_lines(path: Path, lines: list[Any]) -> Path:
    text = b"".join(
        (line.encode() if isinstance(line, str) else orjson.dumps(line)) + b"\n" for line in lines
    )
    path.write_bytes(text)
    return path


def published(bootstrap: str, topic: str, expected: int) -> list[Call]:
    """Every record of `topic` decoded, in order (one partition)."""
    records = read_topic(bootstrap, topic, expected, timeout=30)
    assert len(records) == expected
    return [LocalDecoder().decode(r.value()) for r in records]


def test_bad_lines_are_reported_by_number_and_the_rest_is_published(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    path = write_lines(tmp_path / "calls.jsonl", LINES)
    reported: list[tuple[int, str]] = []
    report = publish_file(
        {"bootstrap.servers": kafka_bootstrap}, topic, path, Encoder(),
        on_refused=lambda n, reason: reported.append((n, reason)),
    )  # fmt: skip
    assert reported == report.refused
    assert [n for n, _ in report.refused] == sorted(REFUSED)
    for number, reason in report.refused:
        assert REFUSED[number] in reason
    assert report.published == 6 and report.stopped_at is None
    assert report.filled == {"messageId": 1, "timestamp": 1}

    calls = published(kafka_bootstrap, topic, 6)
    assert [c.type for c in calls] == ["identify", "screen", "track", "group", "alias", "track"]
    filled = calls[2]
    assert filled.event == "Filled"
    assert uuid.UUID(filled.message_id).version == 4
    moment = datetime.fromisoformat(filled.timestamp)
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5)
    assert calls[1].properties == {} and calls[3].group_id == "acme"


def test_strict_stops_at_the_first_bad_line_and_flushes_what_came_before(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = topic_factory(partitions=1)
    path = write_lines(tmp_path / "calls.jsonl", LINES)
    report = publish_file(
        {"bootstrap.servers": kafka_bootstrap}, topic, path, Encoder(), strict=True,
        progress=True,
    )  # fmt: skip
    assert report.stopped_at == 3 and [n for n, _ in report.refused] == [3]
    assert report.published == 2
    assert "publishing calls.jsonl" in capsys.readouterr().err  # the progress bar (tqdm)
    assert [c.message_id for c in published(kafka_bootstrap, topic, 2)] == ["p-1", "p-2"]


def test_the_command_names_bad_lines_on_stderr_says_what_it_filled_and_exits_1(
    kafka_bootstrap: str,
    topic_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory(partitions=1)
    path = write_lines(tmp_path / "calls.jsonl", LINES)
    monkeypatch.delenv("KLAVIYO_STREAM_CONFIG", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    assert main(["produce", "--input", str(path), "--topic", topic]) == 1
    captured = capsys.readouterr()
    for number, reason in REFUSED.items():
        assert f"{path}:{number}: " in captured.err and reason in captured.err
    assert f"published 6 calls to {topic}" in captured.out
    assert "filled messageId in 1 and timestamp in 1 call(s)" in captured.out
    assert "5 line(s) refused" in captured.out
    good = write_lines(tmp_path / "good.jsonl", [LINES[0], LINES[1]])
    assert main(["produce", "--input", str(good), "--topic", topic, "--strict"]) == 0
    assert len(published(kafka_bootstrap, topic, 8)) == 8


def test_publish_flushes_what_it_sent_before_a_call_it_cannot_encode(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = topic_factory(partitions=1)
    calls = [segment("track", n, event="E") for n in range(3)] + [segment("forget", 9)]
    with pytest.raises(RecordError, match="unknown call type 'forget'"):
        publish({"bootstrap.servers": kafka_bootstrap}, topic, calls, Encoder())
    assert [c.message_id for c in published(kafka_bootstrap, topic, 3)] == ["p-0", "p-1", "p-2"]


def test_backfill_marks_every_record_as_a_historical_load(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = topic_factory(partitions=1)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.delenv("KLAVIYO_STREAM_CONFIG", raising=False)
    lines = write_lines(tmp_path / "old.jsonl", [LINES[0], LINES[11]])
    assert main(["produce", "--input", str(lines), "--topic", topic, "--backfill"]) == 0
    assert main(["produce", "--input", str(lines), "--topic", topic]) == 0  # a live load
    records = read_topic(kafka_bootstrap, topic, 4, timeout=30)
    assert [r.headers() for r in records[:2]] == [[("klaviyo-stream.backfill", b"1")]] * 2
    assert [r.headers() for r in records[2:]] == [None, None]
