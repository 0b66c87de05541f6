"""Structured logs: one JSON object per line with stable keys; secrets never reach the output."""

from __future__ import annotations

import io
import json
import logging
import os
from datetime import datetime

import pytest

from stream.telemetry.logs import REDACTED, configure_logging, redact

KEY = "pk_" + "a1B2c3D4e5" * 3  # shaped like a Klaviyo private key; not a real one


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_one_json_object_per_line_with_stable_keys(log_output: io.StringIO) -> None:
    logger = logging.getLogger("stream.delivery.deliver")
    logger.info("sent %d events", 3, extra={"endpoint": "events"})
    [line] = lines(log_output)
    assert list(line)[:4] == ["ts", "level", "logger", "msg"]
    assert line["level"] == "INFO" and line["logger"] == "stream.delivery.deliver"
    assert line["msg"] == "sent 3 events" and line["endpoint"] == "events"
    ts = datetime.fromisoformat(str(line["ts"]))
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_exceptions_are_one_line_with_exc(log_output: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    [line] = lines(log_output)
    assert "ValueError: boom" in str(line["exc"])


def test_level_filters(log_output: io.StringIO) -> None:
    configure_logging("WARNING", stream=log_output)
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert [line["msg"] for line in lines(log_output)] == ["shown"]


def test_configure_twice_does_not_duplicate_lines(log_output: io.StringIO) -> None:
    configure_logging("INFO", stream=log_output)
    logging.getLogger("x").info("once")
    assert len(lines(log_output)) == 1


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"using key {KEY}", KEY),
        ("headers {'Authorization': 'Klaviyo-API-Key pk_short'}", "pk_short"),
        ("Authorization: Klaviyo-API-Key s3cr3t-value", "s3cr3t-value"),
        ("sandbox pk_sandbox_0000000000000000000000000000", "pk_sandbox_0000"),
    ],
)
def test_redact(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert REDACTED in redact(text)


def test_short_pk_words_are_left_alone() -> None:
    assert redact("pk_id column") == "pk_id column"


def test_secrets_never_reach_the_output(log_output: io.StringIO) -> None:
    log = logging.getLogger("stream.klaviyo")
    log.info("key=%s", KEY)
    log.warning("request", extra={"headers": {"Authorization": f"Klaviyo-API-Key {KEY}"}})
    try:
        raise RuntimeError(f"bad key {KEY}")
    except RuntimeError:
        log.exception("failed with %r", [KEY])
    text = log_output.getvalue()
    assert KEY not in text
    assert text.count(REDACTED) >= 4
    assert len(lines(log_output)) == 3


def test_auto_format_is_console_on_a_terminal_and_json_elsewhere(
    log_output: io.StringIO,
) -> None:
    """LOG_FORMAT unset (`auto`): a person at a terminal reads text, a pipe gets JSON lines."""
    terminal, terminal_end = os.openpty()  # a real pseudo-terminal, as a shell gives
    pipe_read, pipe_write = os.pipe()
    with open(terminal_end, "w") as tty, open(pipe_write, "w") as piped:
        assert configure_logging("INFO", stream=tty, fmt="auto") == "console"
        logging.getLogger("stream.x").info("to a person", extra={"topic": "t"})
        tty.flush()
        shown = os.read(terminal, 4096).decode()
        assert configure_logging("INFO", stream=piped, fmt="auto") == "json"
        logging.getLogger("stream.x").info("to a pipeline", extra={"topic": "t"})
    with open(pipe_read) as read_end:
        piped_lines = read_end.read().splitlines()
    os.close(terminal)
    assert "INFO    stream.x: to a person topic=t" in shown and "{" not in shown
    assert [json.loads(line)["msg"] for line in piped_lines] == ["to a pipeline"]
