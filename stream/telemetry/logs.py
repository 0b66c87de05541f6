"""Structured logging: one JSON object per line on stderr, secrets redacted before output.

Every line has the stable keys `ts` (ISO-8601 UTC), `level`, `logger`, `msg`, then any fields
passed with `extra={...}`, and `exc` when an exception is attached. A filter on the handler
rewrites anything that looks like a Klaviyo private key (`pk_` + 20 or more alphanumerics) or an
`Authorization: Klaviyo-API-Key ...` value, and the password of a URL (`redis://:pw@host`), in
the message, its arguments, the extra fields and the traceback: defence in depth, so a secret
that slips into a log call never reaches the output.

`LOG_FORMAT=console` writes the same records as aligned text for a person at a terminal;
`auto` (the default) does so when the output is a terminal, and writes JSON otherwise.
librdkafka's own lines arrive through `KafkaLogAdapter` (the `logger` of every client) and are
formatted like any other line, with their facility and client name as fields.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "[REDACTED]"

# `Klaviyo-API-Key pk_...` first (the whole header value), then any bare private key, then the
# password of a URL (`scheme://user:password@host`).
_SECRET_PATTERNS = (
    re.compile(r"(Klaviyo-API-Key)\s+[^\s\"',;}\]]+", re.IGNORECASE),
    re.compile(r"\bpk_[A-Za-z0-9_]{20,}"),
    re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*:)(?!\*\*\*@)[^\s/@]+@"),
)

# Attributes every LogRecord has; anything else came from `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()) | {
    "message",
    "asctime",
    "taskName",
}

_HANDLER_NAME = "klaviyo-stream-json"


def redact(text: str) -> str:
    """Return `text` with Klaviyo private keys and API-key header values replaced."""
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PATTERNS[1].sub(REDACTED, text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


def _redact_value(value: Any) -> Any:
    """Redact strings, recursing into JSON-like containers; other values are kept as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """Rewrite a record in place so no formatter can print a secret it carries."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message with its args, redact it and the extras; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                record.__dict__[key] = _redact_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line with stable keys first, extras after."""

    def format(self, record: logging.LogRecord) -> str:
        """`ts`, `level`, `logger`, `msg`, extra fields, then `exc` when there is one."""
        ts = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in line:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: msg key=value ...`: the JSON line's content, for people."""

    def format(self, record: logging.LogRecord) -> str:
        """Local time, level, logger and message, then the extra fields and any traceback."""
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        parts = [f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"]
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                shown = value if isinstance(value, str) else json.dumps(value, default=str)
                parts.append(f"{key}={shown}")
        text = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        return text


class KafkaLogAdapter:
    """librdkafka's log callback target (`logger` in every client's config).

    confluent-kafka calls `log(level, "%s [%s] %s", facility, client, text)` from whichever
    thread polls the client; this turns it into one record whose message is librdkafka's text,
    with `facility` (`FAIL`, `REQTMOUT`, …) and `client` (`rdkafka#producer-1`) as fields.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        """Forward one librdkafka line to Python logging."""
        if not self.logger.isEnabledFor(level):
            return
        if len(args) == 3 and msg == "%s [%s] %s":
            facility, client, text = args
            self.logger.log(level, "%s", text, extra={"facility": facility, "client": client})
        else:
            self.logger.log(level, msg, *args)

    def __deepcopy__(self, memo: dict[int, Any]) -> KafkaLogAdapter:
        return self  # configs are copied; the logger they point at is one

    def __repr__(self) -> str:
        return f"KafkaLogAdapter({self.logger.name})"


def configure_logging(level: str, stream: TextIO | None = None, fmt: str = "json") -> str:
    """Install the JSON (or console) handler on the root logger (replacing an earlier one;
    idempotent). `fmt="auto"` picks console when `stream` is a terminal; returns the format
    used, `json` or `console`."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    output = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if output.isatty() else "json"
    handler = logging.StreamHandler(output)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    return "console" if fmt == "console" else "json"
