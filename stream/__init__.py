"""Kafka → Klaviyo stream processor.

The package tree reads like the pipeline:
consume → decode → route → transform → dedup → identity → batch → deliver → ack.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # one version: pyproject.toml's, read from the installed package's metadata
    __version__ = version("klaviyo-stream")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
