"""Serve the Klaviyo sandbox for a benchmark, optionally without its OpenAPI validation.

jsonschema validation costs the sandbox ~0.4 ms per event (≈2,000 events/s on one core), far
below what the service sends; `--no-validation` removes it so the sink is not what is measured.
The payloads themselves are validated by the test suite, with validation on.

The sandbox keeps every event it accepts. With CPython's default thresholds the cyclic garbage
collector walks that ever-growing store again and again: at 100k stored events those full
collections cost ~10 µs per event, about as much as serving it. This process therefore only
collects its youngest generation, every 100,000 net allocations: cycles that die young
(aiohttp's) are still collected, the store is never walked again.
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

from stream.local.sandbox import SandboxAccount, SandboxConfig
from stream.local.sandbox import app as sandbox_app
from stream.local.sandbox.server import run


def _account(spec: str) -> SandboxAccount:
    """`NAME:KEY:FACTOR` → an account the sandbox serves beside its default one."""
    name, key, factor = spec.split(":")
    return SandboxAccount(name, (key,), rate_limit_factor=float(factor))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--no-rate-limits", action="store_true")
    p.add_argument("--no-validation", action="store_true")
    p.add_argument("--catalog-job-seconds", type=float, default=2.0)
    p.add_argument("--catalog-job-seconds-per-resource", type=float, default=0.01)
    p.add_argument(
        "--account", action="append", default=[], metavar="NAME:KEY:FACTOR",
        help="one more account: its name, private key and share of the limits (repeatable)",
    )  # fmt: skip
    args = p.parse_args()
    gc.set_threshold(100_000, 1_000_000, 1_000_000)
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
            catalog_job_seconds=args.catalog_job_seconds,
            catalog_job_seconds_per_resource=args.catalog_job_seconds_per_resource,
            accounts=tuple(_account(spec) for spec in args.account),
        )
    )


if __name__ == "__main__":
    main()
