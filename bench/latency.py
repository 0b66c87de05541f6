"""Latency of a live stream: publish → accepted by Klaviyo, at a steady rate, real limits.

For each load (a share of the account's steady ceiling on `POST /api/event-bulk-create-jobs`,
150 requests/min × 1,000 events = 2,500 events/s), a fresh topic, sandbox (Klaviyo's real rate
limits, its own process) and service (`klaviyo-stream run`, its own process, default settings)
run while calls are published at a steady rate for `--seconds`: tracks and pages of 20,000
persons at the load's event rate, plus identifies (`--identify-share` of all calls). Then the
backlog drains. Per event: its Kafka record timestamp (set by the publisher) → the time the
sandbox stored it (`GET /sandbox/acceptances`).

Printed per load: events published and accepted (lost = published − accepted), p50, p95, p99,
max latency, the p99 of events published in the first and in the last minute (growing = falling
behind), requests and events per request, the delivery rate while a backlog existed against the
ceiling, and the service's CPU share.

    python bench/latency.py                                  # 50 %, 95 %, 150 %: 3 min each
    python bench/latency.py --loads 0.5 --seconds 30         # quick check (≈ 1 min)
    python bench/latency.py --rate 300 --seconds 60          # a rate instead of a load
    python bench/latency.py --loads 0.5 --deletes 0.5        # with erasures alongside

With `--deletes R`, R erasures a second are published alongside (persons outside the events'
pool: an identify, then its delete call five seconds later): printed, the time from each
delete call's publishing to its deletion confirmed (`DELETION_SETTLE_SECONDS` after Klaviyo
took it, default 60 s), and the events' latency beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field

from common import Broker, SandboxProcess, machine, parser
from live import (
    Acceptances,
    Calls,
    Confirmations,
    CpuSampler,
    DeletionPublisher,
    ServiceProcess,
    SteadyPublisher,
    get_json,
)
from live import percentile as pct

CEILING = 150 / 60 * 1000  # events/s: the bulk endpoint's steady limit × 1,000 events a request
BULK = "POST /api/event-bulk-create-jobs"


@dataclass
class LoadFigures:
    rate: float
    published: int
    identifies: int
    accepted: int
    latencies: list[float]  # sorted, seconds
    first_minute_p99: float
    last_minute_p99: float
    requests: int
    throttled: int
    delivery_rate: float  # events/s while a backlog existed (first acceptance → drained)
    cpu_share: float
    publisher_lag: float
    timeline: list[tuple[int, int, float, float]]  # (second, events, p50, p99) per 10 s
    deletions: int = 0  # erasures published
    confirmed: list[float] = field(default_factory=list)  # publish → confirmed, s, sorted


def run_load(args: argparse.Namespace, rate: float) -> LoadFigures:
    seconds: float = args.seconds
    with (
        Broker(args.bootstrap) as broker,
        SandboxProcess(rate_limits=True, time_scale=1.0) as sandbox,
        tempfile.TemporaryDirectory() as state,
    ):
        topic = broker.topic("bench-latency", partitions=3)
        calls = Calls()
        with ServiceProcess(broker.bootstrap, topic, sandbox.url, state) as service:
            acceptances = Acceptances(sandbox.url)
            publisher = SteadyPublisher(
                broker.bootstrap,
                topic,
                calls,
                rate,
                seconds,
                args.identify_share,
            )
            deleter = (
                DeletionPublisher(broker.bootstrap, topic, args.deletes, seconds)
                if args.deletes else None
            )  # fmt: skip
            confirmations = Confirmations(f"sqlite:///{state}/state.db")
            with CpuSampler(service.pid) as cpu:
                publisher.start()
                if deleter is not None:
                    deleter.start()
                while publisher.running:
                    acceptances.poll()
                    time.sleep(1.0)
                publisher.join()
                published = publisher.published
                # drain: at most the backlog at the ceiling's pace, twice over, plus a minute
                backlog = max(0, len(published) - len(acceptances.received))
                deadline = time.monotonic() + 60 + 2 * backlog / (CEILING * 0.97)
                last_change, known = time.monotonic(), 0
                while time.monotonic() < deadline:
                    count = acceptances.poll()
                    if all(m in acceptances.received for m in published):
                        break
                    if count != known:
                        known, last_change = count, time.monotonic()
                    elif time.monotonic() - last_change > 30:
                        break  # nothing more arrives
                    time.sleep(1.0)
                if deleter is not None:  # every deletion confirmed (a settle time after it)
                    deleter.join()
                    settle = deadline + 180
                    while time.monotonic() < settle:
                        if confirmations.poll() >= len(deleter.published):
                            break
                        time.sleep(1.0)
            confirmations.close()
            stats = get_json(f"{sandbox.url}/sandbox/stats")
    received = acceptances.received
    start = publisher.started
    latencies: list[float] = []
    first: list[float] = []
    last: list[float] = []
    for message_id, stamp in published.items():
        at = received.get(message_id)
        if at is None:
            continue
        latency = at - stamp / 1000
        latencies.append(latency)
        since = stamp / 1000 - start
        if since < 60:
            first.append(latency)
        if since >= seconds - 60:
            last.append(latency)
    buckets: dict[int, list[float]] = {}
    for message_id, stamp in published.items():
        at = received.get(message_id)
        if at is not None:
            buckets.setdefault(int((stamp / 1000 - start) // 10) * 10, []).append(at - stamp / 1000)
    timeline = []
    for second, values in sorted(buckets.items()):
        values.sort()
        timeline.append((second, len(values), pct(values, 0.5), pct(values, 0.99)))
    latencies.sort()
    first.sort()
    last.sort()
    ours = [received[m] for m in published if m in received]
    begun, ended = min(ours, default=0.0), max(ours, default=0.0)
    answered = stats["requests"].get(BULK, {})
    confirmed = sorted(
        confirmations.confirmed[e] - at
        for e, at in (deleter.published.items() if deleter is not None else ())
        if e in confirmations.confirmed
    )
    return LoadFigures(
        deletions=len(deleter.published) if deleter is not None else 0,
        confirmed=confirmed,
        rate=rate,
        published=len(published),
        identifies=publisher.identifies,
        accepted=len(latencies),
        latencies=latencies,
        first_minute_p99=pct(first, 0.99),
        last_minute_p99=pct(last, 0.99),
        requests=sum(answered.values()),
        throttled=int(answered.get("429", 0)),
        delivery_rate=len(ours) / (ended - begun) if ended > begun else 0.0,
        cpu_share=cpu.mean(start, start + seconds),
        publisher_lag=publisher.lagged,
        timeline=timeline,
    )


def report(f: LoadFigures, seconds: float, timeline: bool) -> None:
    lat = f.latencies
    lost = f.published - f.accepted
    print(
        f"\n== {f.rate:,.0f} events/s = {f.rate / CEILING:.2f} of the ceiling, for {seconds:g} s "
        f"(+ {f.identifies:,} identifies; publisher at most {f.publisher_lag * 1000:.0f} ms late)"
    )
    print(f"events published       : {f.published:,}; accepted {f.accepted:,}; lost {lost:,}")
    print(
        f"latency                : p50 {pct(lat, 0.5):.3f} s, p95 {pct(lat, 0.95):.3f} s, "
        f"p99 {pct(lat, 0.99):.3f} s, max {lat[-1] if lat else float('nan'):.3f} s"
    )
    print(
        f"p99 first / last min   : {f.first_minute_p99:.3f} s / {f.last_minute_p99:.3f} s "
        f"(ratio {f.last_minute_p99 / f.first_minute_p99:.2f})"
    )
    per_request = f.accepted / f.requests if f.requests else 0.0
    print(
        f"bulk requests          : {f.requests:,} ({per_request:,.0f} events each), "
        f"{f.throttled} answered 429"
    )
    print(
        f"delivery rate          : {f.delivery_rate:,.0f} events/s = "
        f"{f.delivery_rate / CEILING:.3f} of the ceiling (first acceptance → last)"
    )
    print(f"service CPU            : {f.cpu_share * 100:.0f} % of one core (while publishing)")
    if f.deletions:
        c = f.confirmed
        print(
            f"deletions              : {f.deletions} published, {len(c)} confirmed; publish →"
            f" confirmed p50 {pct(c, 0.5):.1f} s, p99 {pct(c, 0.99):.1f} s,"
            f" max {c[-1] if c else float('nan'):.1f} s"
        )
    if timeline:
        for second, count, p50, p99 in f.timeline:
            print(
                f"  published at {second:>4d} s: {count:>6,} events, "
                f"p50 {p50:.3f} s, p99 {p99:.3f} s"
            )


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--loads", default="0.5,0.95,1.5", help="shares of the 2,500/s ceiling")
    p.add_argument("--rate", type=float, help="one rate in events/s instead of --loads")
    p.add_argument("--seconds", type=float, default=180.0, help="publishing time per load")
    p.add_argument("--identify-share", type=float, default=0.05, help="identifies among calls")
    p.add_argument("--timeline", action="store_true", help="p50 and p99 per 10 s of publishing")
    p.add_argument("--deletes", type=float, default=0.0, help="erasures a second alongside")
    args = p.parse_args()
    rates = [args.rate] if args.rate else [float(x) * CEILING for x in args.loads.split(",")]
    print(f"machine: {machine()}")
    print("default settings (BATCH_LINGER_MS 200, KLAVIYO_MAX_IN_FLIGHT 8); Klaviyo's real limits")
    for rate in rates:
        report(run_load(args, rate), args.seconds, args.timeline)


if __name__ == "__main__":
    main()
