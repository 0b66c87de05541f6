"""Filter-heavy topics: what a record the event definitions filter out costs, vs raw decode.

One topic of realistic calls (`pipeline.py`'s: identifies 5 %, pages ≈ 10 %, the rest tracks)
is consumed three times in one run: (1) raw consume+decode (the baseline), (2) the service
with event definitions that match nothing (every record filtered), (3) the service with
definitions that route ≈ 10 % of the calls (page calls) to the sandbox (limits off). CPU is
this process's (`time.process_time`: the service runs in it; the sandbox has its own).

Printed: CPU-µs per raw record; per filtered record (run 2) and its ratio to raw (target
≤ 1.3); per routed record (run 3, less its filtered records at run 2's cost); run 3's rate
against the raw rate (target ≥ 0.6).

    python bench/filter.py --records 200000
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

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
from stream.telemetry import metrics

NOTHING = "events:\n  - type: track\n    event: No Such Event\n"
PAGES = "events:\n  - type: page\n"


async def service_run(
    bootstrap: str, topic: str, url: str, count: int, definitions: Path
) -> tuple[RunFigures, int]:
    """The service over the whole topic; (figures, records it routed on)."""
    with tempfile.TemporaryDirectory() as state:
        service = Service(
            settings(
                bootstrap,
                topic,
                url,
                state,
                klaviyo_rate_governor=False,
                klaviyo_max_in_flight=4,
                event_definitions_file=str(definitions),
                kafka_group_id=f"bench-{topic}-{definitions.stem}",
            )
        )
        figures = await run_until_done(service, count)
        filtered = sum(
            s.value
            for m in metrics.RECORDS_FILTERED.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        return figures, int(filtered)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--records", type=int, default=200_000)
    args = p.parse_args()
    n = args.records
    with (
        Broker(args.bootstrap) as broker,
        SandboxProcess(rate_limits=False, validate=args.validate) as sandbox,
        tempfile.TemporaryDirectory() as tmp,
    ):
        nothing, pages = Path(tmp) / "nothing.yaml", Path(tmp) / "pages.yaml"
        nothing.write_text(NOTHING)
        pages.write_text(PAGES)
        topic = broker.topic("bench-filter", partitions=3)
        publish(broker.bootstrap, topic, n)
        cpu0 = time.process_time()
        raw_rate = raw_consume_decode(broker.bootstrap, topic, n)
        raw_cpu = (time.process_time() - cpu0) / n
        all_filtered, filtered_a = asyncio.run(
            service_run(broker.bootstrap, topic, sandbox.url, n, nothing)
        )
        routed_run, filtered_b = asyncio.run(
            service_run(broker.bootstrap, topic, sandbox.url, n, pages)
        )
    filtered_b -= filtered_a  # the metric counts across both runs in this process
    per_filtered = all_filtered.cpu_seconds / n
    routed = n - filtered_b
    per_routed = (routed_run.cpu_seconds - filtered_b * per_filtered) / max(routed, 1)
    print(f"machine: {machine()}")
    print(f"topic: {n:,} records; definitions route {routed:,} ({routed / n:.1%}) of them")
    print(f"raw consume+decode     : {raw_rate:>9,.0f} records/s, {raw_cpu * 1e6:6.1f} CPU-µs each")
    print(
        f"all filtered           : {all_filtered.rate:>9,.0f} records/s, "
        f"{per_filtered * 1e6:6.1f} CPU-µs each = {per_filtered / raw_cpu:.2f}× raw"
    )
    print(
        f"10 % routed            : {routed_run.rate:>9,.0f} records/s = "
        f"{routed_run.rate / raw_rate:.2f}× the raw rate; "
        f"{per_routed * 1e6:.1f} CPU-µs per routed record"
    )


if __name__ == "__main__":
    main()
