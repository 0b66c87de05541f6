"""The `log_output` fixture: the service's JSON logs at DEBUG into a buffer."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from stream.telemetry.logs import configure_logging


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The service's JSON logging at DEBUG into a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
