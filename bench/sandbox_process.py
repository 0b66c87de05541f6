"""Serve the Klaviyo sandbox for a benchmark, optionally without its OpenAPI validation.

jsonschema validation costs the sandbox ~0.4 ms per event (≈2,000 events/s on one core), far
below what the service sends; `--no-validation` removes it so the sink is not what is measured.
The payloads themselves are validated by the test suite, with validation on.
"""

from __future__ import annotations

import argparse
from typing import Any

from stream.sandbox import SandboxConfig
from stream.sandbox import app as sandbox_app
from stream.sandbox.server import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--no-rate-limits", action="store_true")
    p.add_argument("--no-validation", action="store_true")
    args = p.parse_args()
    if args.no_validation:

        def no_errors(validator: Any, body: Any, depth: int) -> list[Any]:
            return []

        sandbox_app.schema_errors = no_errors  # type: ignore[assignment]
    run(
        SandboxConfig(
            port=args.port,
            rate_limits=not args.no_rate_limits,
            time_scale=args.time_scale,
            request_log_limit=0,
        )
    )


if __name__ == "__main__":
    main()
