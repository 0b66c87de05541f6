"""Catalog sync against Klaviyo's limits: a first sync of a large product topic, and a run that
needs more than 500 jobs in progress.

1. `--products N` (default 1,000,000): a backlog of N catalog items, the service syncing them
   from an empty state store: items/s against what the limits allow (the item bulk-create
   endpoint's 750 requests a minute × 100 items, time-scaled; the job status GET has the same
   quota, and each job needs one), the service's peak RSS at each quarter (flat: the catalog
   stage holds at most CATALOG_MAX_PENDING_RECORDS records, the rest waits in Kafka).
2. `--capped N` (default 60,000): the same with jobs that take long (`--slow-job-seconds`), so
   that the limits would put more than 500 in progress: the most in progress at once (the
   sandbox counts), 429 answers, items/s against min(rate limit, 500 jobs / job duration).

The sandbox's model of job duration (stated beside the figures): a job completes
`(catalog_job_seconds + catalog_job_seconds_per_resource × resources) × time_scale` after its
202, every job on its own (no queue at "Klaviyo"); Klaviyo publishes no duration.

    python bench/catalog.py --time-scale 0.1 --products 1000000 --capped 60000
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from common import Broker, SandboxProcess, machine, parser, produce, settings
from confluent_kafka.admin import AdminClient, NewTopic

from stream.engine.service import Service
from stream.klaviyo.catalog import MAX_JOBS_IN_PROGRESS, MAX_PER_JOB, job_endpoint
from stream.klaviyo.governor import Governor
from stream.ops.produce_catalog import CatalogEncoder

TEMPLATE = "P0000000"  # ids are 8 characters: a record is the template with its id replaced


def publish_products(bootstrap: str, topic: str, count: int) -> float:
    """`count` catalog items `P0000000`…, keyed `item:<id>`; seconds taken."""
    key, value = CatalogEncoder().encode(
        {"type": "catalog_item", "id": TEMPLATE, "title": f"Product {TEMPLATE}",
         "url": f"https://shop.example/p/{TEMPLATE}", "price": 19.5,
         "description": "A product of the benchmark catalog."}  # fmt: skip
    )
    assert value is not None
    marker = TEMPLATE.encode()
    idents = (f"P{n:07d}".encode() for n in range(count))
    return produce(
        bootstrap, topic, ((key.replace(marker, i), value.replace(marker, i)) for i in idents)
    )


def compacted_topic(bootstrap: str, name: str, partitions: int = 4) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config={"cleanup.policy": "compact"})])[
        name
    ].result(30)
    return name


def rss_mb() -> float:
    """This process's resident set size now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class SyncFigures:
    items: int
    seconds: float
    cpu: float  # the service's CPU seconds (this process) over the run
    rss: list[float]  # MiB at 25/50/75/100 % of the items finished
    sandbox: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.items / self.seconds


async def sync(bootstrap: str, topic: str, url: str, count: int, time_scale: float) -> SyncFigures:
    """Run the service until every item is finished; wall time from the first consumed record."""
    with tempfile.TemporaryDirectory() as state:
        service = Service(
            settings(bootstrap, f"{topic}-events", url, state, catalog_topics=(topic,),
                     klaviyo_rate_time_scale=time_scale, catalog_linger_ms=200)  # fmt: skip
        )
        task = asyncio.create_task(service.run())
        rss: list[float] = []
        started = cpu = 0.0
        try:
            while True:
                if task.done():
                    task.result()
                    raise RuntimeError("service stopped early")
                consumed = service.result.consumed
                if consumed and not started:
                    started, cpu = time.perf_counter(), time.process_time()
                finished = consumed - service.pending
                while len(rss) < 4 and finished >= count * (len(rss) + 1) / 4:
                    rss.append(rss_mb())
                if consumed >= count and service.running is not None and service.pending == 0:
                    seconds = time.perf_counter() - started
                    cpu = time.process_time() - cpu
                    break
                await asyncio.sleep(0.05)
        finally:
            service.stop()
            await asyncio.wait_for(task, 300)
    async with aiohttp.ClientSession() as http, http.get(url + "/sandbox/stats") as resp:
        stats = await resp.json()
    async with aiohttp.ClientSession() as http, http.get(url + "/sandbox/catalog") as resp:
        catalog = await resp.json()
    return SyncFigures(count, seconds, cpu, rss, {"stats": stats, "catalog": catalog})


def ceiling(time_scale: float, seconds: float) -> float:
    """Items the item bulk-create quota allows in `seconds` (750 a minute × 100, time-scaled)."""
    return Governor(time_scale=time_scale).ceiling(job_endpoint("item", "create"), seconds) * 100


def report(title: str, figures: SyncFigures, time_scale: float, job_seconds: float) -> None:
    allowed = ceiling(time_scale, figures.seconds)
    stats, catalog = figures.sandbox["stats"], figures.sandbox["catalog"]
    per_job = job_seconds * time_scale
    cap_rate = MAX_JOBS_IN_PROGRESS / per_job * MAX_PER_JOB
    print(f"\n{title}")
    print(f"  {figures.items:,} items in {figures.seconds:.1f} s = {figures.rate:,.0f} items/s")
    print(f"  the limits allow {allowed / figures.seconds:,.0f} items/s (750 requests/min × 100, "
          f"× 1/{time_scale:g}); ratio {figures.items / allowed:.2f}")  # fmt: skip
    print(f"  500 jobs in progress of {per_job:.2f} s allow {cap_rate:,.0f} items/s; "
          f"ratio {figures.rate / min(cap_rate, allowed / figures.seconds):.2f} of the binding one")
    print(f"  jobs in progress at most {catalog['most_in_progress']} (cap {MAX_JOBS_IN_PROGRESS}), "
          f"{catalog['refused_over_cap']} refused over it, {stats['throttled']} 429s in "
          f"{stats['requests_total']:,} requests")  # fmt: skip
    throttled = {k: v["429"] for k, v in stats["requests"].items() if v.get("429")}
    if throttled:
        print(f"  429s by endpoint: {throttled}")
    print("  service RSS (MiB) at 25/50/75/100 %: " + " / ".join(f"{r:.0f}" for r in figures.rss))
    print(f"  CPU: service {figures.cpu:.1f} s ({figures.items / figures.cpu:,.0f} items per "
          f"CPU-second), sandbox {figures.sandbox['cpu']:.1f} s, over {figures.seconds:.1f} s")


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--time-scale", type=float, default=0.1)
    p.add_argument("--products", type=int, default=1_000_000)
    p.add_argument("--capped", type=int, default=60_000)
    p.add_argument("--job-seconds", type=float, default=2.0, help="the sandbox's base job time")
    p.add_argument("--slow-job-seconds", type=float, default=60.0, help="the capped run's")
    args = p.parse_args()
    print(f"catalog bench on {machine()}; time scale {args.time_scale:g}")
    print(f"sandbox job duration model: ({args.job_seconds:g} s + 0.01 s × resources) × "
          f"{args.time_scale:g}; capped run: ({args.slow_job_seconds:g} s + 0.01 s × resources)"
          f" × {args.time_scale:g}")  # fmt: skip
    with Broker(args.bootstrap) as broker:
        # the small run first: after a million items this process's heap is large, and its
        # garbage collections pause the event loop long enough to bunch requests up
        runs = [("more than 500 jobs wanted", args.capped, args.slow_job_seconds),
                ("first sync", args.products, args.job_seconds)]  # fmt: skip
        for title, count, job_seconds in runs:
            if not count:
                continue
            extra = ("--catalog-job-seconds", str(job_seconds))
            with SandboxProcess(time_scale=args.time_scale, validate=args.validate,
                                extra=extra) as sandbox:  # fmt: skip
                topic = compacted_topic(broker.bootstrap, f"products-{time.time_ns()}")
                took = publish_products(broker.bootstrap, topic, count)
                print(f"\n({count:,} items published in {took:.1f} s)")
                cpu0 = sandbox.cpu_seconds()
                figures = asyncio.run(sync(broker.bootstrap, topic, sandbox.url, count,
                                           args.time_scale))  # fmt: skip
                figures.sandbox["cpu"] = sandbox.cpu_seconds() - cpu0
                report(f"{title}: {count:,} items", figures, args.time_scale,
                       job_seconds + 0.01 * MAX_PER_JOB)  # fmt: skip


if __name__ == "__main__":
    main()
