"""`python -m stream.local.kafka [--port 9092] [--work-dir DIR]`: a local broker until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream.core.errors import BrokerError
from stream.local.kafka.broker import run_foreground


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the broker in the foreground; 1 if it cannot start."""
    parser = argparse.ArgumentParser(
        prog="python -m stream.local.kafka", description="Run a local Kafka 4.x broker (KRaft)."
    )
    parser.add_argument("--port", type=int, default=9092, help="client port (0 = any free port)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep data here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    try:
        run_foreground(port=args.port, work_dir=args.work_dir)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
