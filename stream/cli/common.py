"""What the commands share: the settings-file help, one-line errors without secrets, logging,
the call encoder for a topic, and the sandbox's parts."""

from __future__ import annotations

from typing import Any

from stream.core.errors import ConfigError
from stream.core.settings import Settings

CONFIG_HELP = "settings file (YAML or JSON); env vars win over it"


def redacted(exc: BaseException) -> str:
    from stream.telemetry.logs import redact

    return redact(str(exc))


def configure_logging(level: str, fmt: str = "json") -> str:
    from stream.telemetry.logs import configure_logging

    return configure_logging(level, fmt=fmt)


def encoder(settings: Settings, topic: str) -> Any:
    from stream.intake.registry import auth_setting, registry_client
    from stream.ops.produce import Encoder

    client = registry_client(settings)
    return Encoder(registry=client, topic=topic, setting=auth_setting(settings))


def sandbox_parts() -> tuple[Any, Any]:
    """The sandbox's classes; without the `local` extra, one line saying how to get it."""
    try:
        from stream.local.sandbox import SandboxConfig, SandboxThread
    except ImportError as exc:
        raise ConfigError(
            f"the Klaviyo sandbox needs the `local` extra ({exc.name} is missing): "
            "pip install 'klaviyo-stream[local]'"
        ) from None
    return SandboxConfig, SandboxThread
