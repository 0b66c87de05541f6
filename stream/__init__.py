"""Kafka → Klaviyo stream processor.

The package tree reads like the pipeline:
intake → rules → identity → delivery → completion, run by engine/; klaviyo/ is the API,
state/ the stores, core/ what all share, telemetry/, ops/ (operator commands), local/ (stand-ins).
"""

from importlib.metadata import PackageNotFoundError, version

try:  # one version: pyproject.toml's, read from the installed package's metadata
    __version__ = version("klaviyo-stream")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
