"""`klaviyo-stream produce --input` throughput: records/s from a JSON-lines file to the broker.

Writes `--records` realistic sample calls (`stream.local.sample`) to a temporary JSON-lines file,
then publishes it with `stream.ops.produce.publish_file` — the function `produce --input` runs: each
line parsed, checked as the decoder would check it, Avro-encoded and handed to librdkafka, then
flushed. Prints records/s (wall) and records per CPU-second of this process.

    python bench/produce.py --records 200000
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Broker, machine, parser  # noqa: E402
from stream.local.sample import sample_calls  # noqa: E402
from stream.ops.produce import Encoder, publish_file  # noqa: E402


def write_calls(path: Path, count: int) -> int:
    """`count` sample calls as JSON lines; returns the file's size in bytes."""
    with path.open("wb") as handle:
        for call in sample_calls(count, seed=5, persons=max(count // 20, 1)):
            handle.write(orjson.dumps(call) + b"\n")
    return path.stat().st_size


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-produce-") as tmp:
        path = Path(tmp) / "calls.jsonl"
        size = write_calls(path, args.records)
        print(f"{machine()}; {args.records:,} calls, {size / 1e6:.1f} MB of JSON lines")
        with Broker(args.bootstrap) as broker:
            topic = broker.topic("bench-produce", args.partitions)
            config = {"bootstrap.servers": broker.bootstrap}
            wall, cpu = time.perf_counter(), time.process_time()
            report = publish_file(config, topic, path, Encoder())
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert report.published == args.records and not report.refused, report.refused[:3]
    print(
        f"produce --input: {report.published:,} records in {wall:.2f} s = "
        f"{report.published / wall:,.0f} records/s "
        f"({report.published / cpu:,.0f} per CPU-second of this process; pid {os.getpid()})"
    )


if __name__ == "__main__":
    main()
