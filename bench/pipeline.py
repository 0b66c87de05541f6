"""Pipeline benchmark: events/s through the whole service vs raw consume+decode, one run.

The topic is published once; then (1) a bare consumer reads and decodes all of it (the
baseline, what Kafka + fastavro allow one process), and (2) the service runs on it, on the real
broker, against the sandbox with rate limits off, until every record is delivered and its offset
stored. Printed: both rates, their ratio, and the service's rate per CPU-second of its own
process (what it would do with a core to itself: the sandbox and broker share the machine).

    python bench/pipeline.py --records 200000 [--sequential-ids]
"""

from __future__ import annotations

import asyncio
import tempfile

from common import (
    Broker,
    RunFigures,
    SandboxProcess,
    machine,
    parser,
    publish,
    raw_consume_decode,
    run_until_done,
    settings,
)

from stream.engine.service import Service


async def service_run(bootstrap: str, topic: str, url: str, count: int) -> RunFigures:
    with tempfile.TemporaryDirectory() as state:
        service = Service(
            settings(
                bootstrap,
                topic,
                url,
                state,
                klaviyo_rate_governor=False,  # the sandbox runs without limits
                klaviyo_max_in_flight=4,
                max_pending_records=50_000,
            )
        )
        return await run_until_done(service, count)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument(
        "--sequential-ids",
        action="store_true",
        help="messageIds 0, 1, 2, … (the dedup store's best case) instead of random uuid4s",
    )
    args = p.parse_args()
    with (
        Broker(args.bootstrap) as broker,
        SandboxProcess(rate_limits=False, validate=args.validate) as sandbox,
    ):
        topic = broker.topic("bench-pipeline", partitions=3)
        seconds = publish(broker.bootstrap, topic, args.records, sequential_ids=args.sequential_ids)
        ids = "sequential" if args.sequential_ids else "random uuid4"
        print(f"published {args.records:,} records ({ids} messageIds) in {seconds:.1f} s")
        raw = raw_consume_decode(broker.bootstrap, topic, args.records)
        sandbox_cpu = sandbox.cpu_seconds()
        figures = asyncio.run(service_run(broker.bootstrap, topic, sandbox.url, args.records))
        sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu
    print(f"machine: {machine()}")
    print(f"raw consume+decode     : {raw:>10,.0f} records/s")
    print(
        f"service, end to end    : {figures.rate:>10,.0f} records/s  ({figures.wall_seconds:.1f} s)"
    )
    print(f"service per CPU-second : {figures.cpu_rate:>10,.0f} records/s")
    print(f"sandbox CPU-seconds    : {sandbox_cpu:>10.1f}  (service: {figures.cpu_seconds:.1f})")
    print(f"ratio service/raw      : {figures.rate / raw:>10.2f}")
    print(f"ratio service-CPU/raw  : {figures.cpu_rate / raw:>10.2f}")


if __name__ == "__main__":
    main()
