"""Backlog benchmark: peak RSS of the service facing a large backlog, for growing backlogs.

Each backlog is published to its own topic; a fresh child process runs the service on it
against the sandbox with Klaviyo's real limits (so the backlog stays a backlog) for `--seconds`,
and reports its peak RSS. Backpressure (MAX_PENDING_RECORDS, paused partitions, librdkafka's
bounded pre-fetch queue) must keep it flat: the ratio largest/smallest should be ≈ 1.

    python bench/backlog_rss.py --backlogs 250000,1000000 --seconds 20
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Broker, SandboxProcess, machine, parser, peak_rss_mb, publish, settings

from stream.engine.service import Service


async def child(bootstrap: str, topic: str, url: str, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as state:
        service = Service(settings(bootstrap, topic, url, state))
        task = asyncio.create_task(service.run())
        deadline = time.monotonic() + seconds
        peak_pending = 0
        while time.monotonic() < deadline and not task.done():
            peak_pending = max(peak_pending, service.pending)
            await asyncio.sleep(0.05)
        consumed = service.result.consumed
        service.stop()
        await asyncio.wait_for(task, 120)
    print(json.dumps({"rss_mb": peak_rss_mb(), "consumed": consumed, "pending": peak_pending}))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--backlogs", default="250000,1000000")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--child", nargs=3, metavar=("BOOTSTRAP", "TOPIC", "URL"), help="internal")
    args = p.parse_args()
    if args.child:
        asyncio.run(child(*args.child, args.seconds))
        return
    results = {}
    with Broker(args.bootstrap) as broker, SandboxProcess(validate=args.validate) as sandbox:
        for backlog in (int(b) for b in args.backlogs.split(",")):
            topic = broker.topic("bench-backlog")
            publish(broker.bootstrap, topic, backlog)
            out = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__)),
                    "--seconds",
                    str(args.seconds),
                    "--child",
                    broker.bootstrap,
                    topic,
                    sandbox.url,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[backlog] = json.loads(out.strip().splitlines()[-1])
    print(f"machine: {machine()}")
    print(f"{'backlog':>10} {'peak RSS':>10} {'consumed':>10} {'peak pending':>13}")
    for backlog, r in results.items():
        print(f"{backlog:>10,} {r['rss_mb']:>8.0f} MB {r['consumed']:>10,} {r['pending']:>13,}")
    sizes = sorted(results)
    ratio = results[sizes[-1]]["rss_mb"] / results[sizes[0]]["rss_mb"]
    print(f"peak RSS ratio {sizes[-1]:,} / {sizes[0]:,} records: {ratio:.2f}")


if __name__ == "__main__":
    main()
