"""Builders shared by the destination-feature tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stream.core.calls import Call, normalize

_COUNTER = iter(range(1, 10**9))


def call(call_type: str, **fields: Any) -> Call:
    """A `Call` built the way the decoder builds one, with a fresh messageId."""
    record: dict[str, Any] = {
        "messageId": f"m-{next(_COUNTER)}",
        "timestamp": "2025-03-01T10:00:00Z",
        **fields,
    }
    return normalize(call_type, record)


def write_yaml(directory: Path, name: str, document: Any) -> str:
    """Write `document` as YAML into `directory/name`; its path as a string."""
    path = directory / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return str(path)


def inspect(base_url: str, path: str) -> Any:
    """GET a sandbox inspection endpoint synchronously (for tests whose code runs its own loop)."""
    import json
    import urllib.request

    with urllib.request.urlopen(base_url + path, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())
