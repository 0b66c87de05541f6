"""Sandbox settings: one immutable object, validated when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OPENAPI_DIR = Path(__file__).resolve().parent / "openapi"
"""The vendored Klaviyo OpenAPI slices (revision 2026-07-15, MIT) the sandbox validates against."""

DEFAULT_API_KEY = "pk_sandbox_0000000000000000000000000000"
DEFAULT_PUBLIC_KEY = "SBXPUB"


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox listens, which keys it accepts, and how hostile it is.

    `time_scale` shrinks every rate-limit window (0.1 → a 1 s burst window lasts 0.1 s) so
    benchmarks can exercise throttling quickly. `fault_rate` is the share of API requests
    answered with a 500, 503, 429 or a dropped connection instead of being served.

    `merge_delay_seconds`: Klaviyo's profile-merge only queues a task; the sandbox applies it
    this long after the 201 (0: on the next turn of the event loop, still after the answer).
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    public_keys: tuple[str, ...] = (DEFAULT_PUBLIC_KEY,)
    rate_limits: bool = True
    time_scale: float = 1.0
    fault_rate: float = 0.0
    fault_seed: int | None = None
    request_log_limit: int = 100_000
    openapi_dir: Path = field(default=OPENAPI_DIR)
    merge_delay_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.api_keys:
            raise ValueError("SandboxConfig.api_keys: at least one private key is required")
        if self.time_scale <= 0:
            raise ValueError("SandboxConfig.time_scale must be > 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("SandboxConfig.fault_rate must be within [0, 1]")
        if self.request_log_limit < 0:
            raise ValueError("SandboxConfig.request_log_limit must be >= 0")
        if not 0 <= self.merge_delay_seconds <= 3600:
            raise ValueError("SandboxConfig.merge_delay_seconds must be within [0, 3600]")
        if not Path(self.openapi_dir).is_dir():
            raise ValueError(f"SandboxConfig.openapi_dir: {self.openapi_dir} is not a directory")
