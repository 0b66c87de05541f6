"""Mixed traffic against the sandbox's limits ×10: does the service use what Klaviyo allows?

A topic holds identifies of `--persons` people, then `--tracks` track and page calls of
theirs (by userId). The sandbox enforces Klaviyo's real limits shrunk by `--time-scale` (0.1:
ten times the requests, so 25,000 events/s on the bulk endpoint) and the service, `klaviyo-stream
run` in its own process, is told the same scale. Printed: delivered events/s against what the
sandbox allows, the service process's CPU share (sampled from /proc each second while it
delivered), its records per CPU-second, and, with `--spy`, where its time goes (py-spy attached
to the service process; inclusive shares of its busy samples).

Met when the service delivers ≥ 90 % of what the sandbox allows, or is CPU-bound: ≥ 90 % of one
core and at the per-CPU-second rate of `pipeline.py`. The same topic is then consumed again by
a fresh service against a sandbox without limits (governor off): the records per CPU-second
this traffic costs when nothing at all is waited for, to compare the governed run with.

    python bench/mix.py --time-scale 0.1 --persons 10000 --tracks 200000 [--spy spy.txt]
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time

from common import Broker, SandboxProcess, machine, parser
from confluent_kafka import Producer
from live import Calls, CpuSampler, ServiceProcess, cpu_seconds, get_json, producer
from spy_report import shares

BULK = "POST /api/event-bulk-create-jobs"


def publish_backlog(bootstrap: str, topic: str, calls: Calls, persons: int, tracks: int) -> None:
    """Identifies of `persons` people first, then `tracks` events."""
    out: Producer = producer(bootstrap)
    for n in range(persons + tracks):
        key, value, _ = calls.make(identify=n < persons, person=n if n < persons else None)
        while True:
            try:
                out.produce(topic, value=value, key=key)
                break
            except BufferError:
                out.poll(0.05)
    if out.flush(120):
        raise RuntimeError("records left unpublished")


def unlimited_rate(bootstrap: str, topic: str, records: int, tracks: int) -> float:
    """Records per CPU-second of a fresh service consuming the whole topic, no limits."""
    with (
        SandboxProcess(rate_limits=False) as sandbox,
        tempfile.TemporaryDirectory() as state,
    ):
        extra = {"KLAVIYO_RATE_GOVERNOR": "false", "KAFKA_GROUP_ID": f"bench-{topic}-unlimited"}
        with ServiceProcess(bootstrap, topic, sandbox.url, state, extra) as service:
            cpu0 = cpu_seconds(service.pid)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                if get_json(f"{sandbox.url}/sandbox/stats")["events"] >= tracks:
                    break
                time.sleep(0.25)
            return records / (cpu_seconds(service.pid) - cpu0)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--time-scale", type=float, default=0.1)
    p.add_argument("--persons", type=int, default=10_000)
    p.add_argument("--tracks", type=int, default=200_000)
    p.add_argument("--spy", help="record a py-spy profile of the service into this file")
    args = p.parse_args()
    calls = Calls(persons=args.persons, pool=min(args.persons, 10_000))
    ceiling = 150 / (60 * args.time_scale) * 1000
    with (
        Broker(args.bootstrap) as broker,
        SandboxProcess(rate_limits=True, time_scale=args.time_scale) as sandbox,
        tempfile.TemporaryDirectory() as state,
    ):
        topic = broker.topic("bench-mix", partitions=3)
        publish_backlog(broker.bootstrap, topic, calls, args.persons, args.tracks)
        sandbox_cpu0 = sandbox.cpu_seconds()
        extra = {"KLAVIYO_RATE_TIME_SCALE": str(args.time_scale)}
        with ServiceProcess(broker.bootstrap, topic, sandbox.url, state, extra) as service:
            spy = None
            if args.spy:
                if shutil.which("py-spy") is None:
                    raise SystemExit("--spy needs py-spy (pip install py-spy)")
                spy = subprocess.Popen(
                    ["py-spy", "record", "-p", str(service.pid), "-r", "200", "-f", "raw",
                     "-o", args.spy],  # fmt: skip
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            with CpuSampler(service.pid) as cpu:
                cpu0, t0 = cpu_seconds(service.pid), time.time()
                first = last = 0.0
                events = 0
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    events = get_json(f"{sandbox.url}/sandbox/stats")["events"]
                    now = time.time()
                    if events and not first:
                        first = now
                    if events >= args.tracks:
                        last = now
                        break
                    time.sleep(0.25)
                cpu_used = cpu_seconds(service.pid) - cpu0
                wall = time.time() - t0
            stats = get_json(f"{sandbox.url}/sandbox/stats")
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
        sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu0
        unlimited = unlimited_rate(
            broker.bootstrap, topic, args.persons + args.tracks, args.tracks
        )
    records = args.persons + args.tracks
    delivered = args.tracks / (last - first) if last > first else 0.0
    share = cpu.mean(first, last)
    answered = stats["requests"].get(BULK, {})
    print(f"machine: {machine()}")
    print(
        f"traffic: identifies of {args.persons:,} persons, then {args.tracks:,} events; "
        f"time scale {args.time_scale} (the bulk endpoint allows {ceiling:,.0f} events/s)"
    )
    print(
        f"delivered              : {delivered:,.0f} events/s = {delivered / ceiling:.3f} of "
        f"what the sandbox allows (first event accepted → last)"
    )
    print(f"service CPU share      : {share * 100:.0f} % of one core (mean while delivering)")
    print(f"service per CPU-second : {records / cpu_used:,.0f} records ({wall:.1f} s in all)")
    print(
        f"same topic, no limits  : {unlimited:,.0f} records per CPU-second "
        f"(governed / unlimited {records / cpu_used / unlimited:.2f})"
    )
    print(f"sandbox CPU-seconds    : {sandbox_cpu:.1f} (service: {cpu_used:.1f})")
    per_request = args.tracks / max(sum(answered.values()), 1)
    profile_requests = {
        k: sum(v.values()) for k, v in stats["requests"].items() if "profile" in k
    }
    print(
        f"bulk event requests    : {sum(answered.values()):,} ({per_request:,.0f} events each), "
        f"{answered.get('429', 0)} answered 429"
    )
    print(f"profiles               : {stats['profiles']:,}; requests {profile_requests}")
    if args.spy:
        print("where the service's time goes (py-spy, inclusive shares of busy samples):")
        for line in shares(args.spy, top=30, everything=True):
            print(f"  {line}")


if __name__ == "__main__":
    main()
