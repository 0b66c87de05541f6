"""The config-file reader shared by event definitions, transformations and HIPAA allow-lists.

One job: a YAML or JSON file → a mapping, or a `ConfigError` of the caller's kind naming the
file. Validation of the content stays with each file's own module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from stream.core.errors import ConfigError


def load_document(path: str | Path, error: type[ConfigError]) -> dict[str, Any]:
    """A YAML or JSON config file as a mapping; `error` (naming the file) when it is not one."""
    file = Path(path)
    if not file.is_file():
        raise error(f"{path}: no such file")
    text = file.read_text(encoding="utf-8")
    try:
        data = orjson.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if file.suffix == ".json" else "YAML"
        raise error(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping")
    return data
