"""Profile the service's hot path with pyinstrument: publish, run to completion, print the tree.

python bench/profile_service.py --records 30000 [--html profile.html]
"""

from __future__ import annotations

import asyncio
import tempfile

from common import Broker, SandboxProcess, parser, publish, run_until_done, settings
from pyinstrument import Profiler

from stream.engine.service import Service


async def profiled(bootstrap: str, topic: str, url: str, count: int, html: str | None) -> None:
    with tempfile.TemporaryDirectory() as state:
        service = Service(settings(bootstrap, topic, url, state, klaviyo_rate_governor=False))
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        figures = await run_until_done(service, count)
        profiler.stop()
    print(f"{figures.rate:,.0f} records/s, {figures.cpu_rate:,.0f} per CPU-second")
    if html:
        profiler.write_html(html)
    print(profiler.output_text(unicode=True, color=False, show_all=False))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--records", type=int, default=30_000)
    p.add_argument("--html")
    args = p.parse_args()
    with Broker(args.bootstrap) as broker, SandboxProcess(rate_limits=False) as sandbox:
        topic = broker.topic("bench-profile")
        publish(broker.bootstrap, topic, args.records)
        asyncio.run(profiled(broker.bootstrap, topic, sandbox.url, args.records, args.html))


if __name__ == "__main__":
    main()
