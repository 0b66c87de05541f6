"""Four Klaviyo accounts on one shared backlog (issue 22) beside one account on the same records.

A topic holds identifies of `--persons` people, then `--tracks` track and page calls of theirs,
each record with a `klaviyo-account` header naming one of four accounts (by person, so a
person's calls all go to one account). The sandbox (its own process) serves the four accounts,
each with a quarter of Klaviyo's limits shrunk by `--time-scale`, so together they allow what
one account allows in `mix.py`; the service (`klaviyo-stream run`, its own process, told the
same scale) reads the topic with an ACCOUNTS_FILE routing by the header. With `--fan-out` the
fourth account takes a copy of every record instead (its full limits; the other three split
the records and each has a third of the limits): two account copies per record.

The same topic is then read by a fresh single-account service against a one-account sandbox
with the full limits (`mix.py`'s run). Printed for both: delivered events/s against what the
limits allow together, the service process's CPU share while delivering (sampled from /proc
each second), records and account copies per CPU-second, 429s; and the ratios of the
four-account run to the single-account one (issue 22's target: records per CPU-second within
10 %).

    python bench/accounts.py --time-scale 0.1 --persons 10000 --tracks 200000 [--fan-out]
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import Broker, SandboxProcess, machine, parser
from confluent_kafka import Producer
from live import Calls, CpuSampler, ServiceProcess, cpu_seconds, get_json, producer

BULK = "POST /api/event-bulk-create-jobs"
ACCOUNTS = ("brand-0", "brand-1", "brand-2", "brand-3")
KEYS = {name: f"pk_bench_{n}_" + str(n) * 24 for n, name in enumerate(ACCOUNTS)}


@dataclass
class Run:
    """What one governed run measured."""

    delivered: float  # events/s, first event accepted → last
    cpu_share: float  # of one core, mean while delivering
    cpu_used: float  # CPU-seconds of the service process
    wall: float
    answered: dict[str, int]  # the bulk endpoint's answers by status, every account's


def account_of(person: int, fan_out: bool) -> str:
    return ACCOUNTS[person % (3 if fan_out else 4)]


def publish_backlog(
    bootstrap: str, topic: str, calls: Calls, persons: int, tracks: int, fan_out: bool
) -> None:
    """Identifies of `persons` people first, then `tracks` events, each with the header naming
    its person's account."""
    out: Producer = producer(bootstrap)
    for n in range(persons + tracks):
        key, value, _ = calls.make(identify=n < persons, person=n if n < persons else None)
        headers = [("klaviyo-account", account_of(int(key[5:]), fan_out).encode())]
        while True:
            try:
                out.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                out.poll(0.05)
    if out.flush(120):
        raise RuntimeError("records left unpublished")


def accounts_file(path: Path, fan_out: bool) -> Path:
    """Three (or four) accounts by header; with `fan_out`, the fourth takes every record."""
    accounts: list[dict[str, object]] = [
        {"name": name, "key": f"env:BENCH_KEY_{n}", "header": True}
        for n, name in enumerate(ACCOUNTS)
    ]
    if fan_out:
        accounts[3] = {**accounts[3], "match": "all", "fan-out": True}
        del accounts[3]["header"]
    path.write_text(json.dumps({"accounts": accounts, "unmatched": "dead-letter"}))
    return path


def factors(fan_out: bool) -> dict[str, float]:
    """Each account's share of Klaviyo's limits: a quarter each, or a third of them for the
    three sharing the records and the whole of them for the fan-out account."""
    if fan_out:
        return {name: (1.0 if name == ACCOUNTS[3] else 1 / 3) for name in ACCOUNTS}
    return dict.fromkeys(ACCOUNTS, 0.25)


def governed(
    bootstrap: str, topic: str, sandbox: SandboxProcess, extra: dict[str, str],
    accounts: tuple[str, ...], events: int,
) -> Run:  # fmt: skip
    """A service reading the whole topic against `sandbox` until it stored `events` events
    (over `accounts`, or the default account's when empty)."""
    queries = [f"?account={name}" for name in accounts] or [""]

    def stored() -> tuple[int, dict[str, int]]:
        found, answered = 0, {}
        for query in queries:
            stats = get_json(f"{sandbox.url}/sandbox/stats{query}")
            found += stats["events"]
            for status, count in stats["requests"].get(BULK, {}).items():
                answered[status] = answered.get(status, 0) + count
        return found, answered

    with (
        tempfile.TemporaryDirectory() as state,
        ServiceProcess(bootstrap, topic, sandbox.url, state, extra) as service,
        CpuSampler(service.pid) as cpu,
    ):
        cpu0, t0 = cpu_seconds(service.pid), time.time()
        first = last = 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            found, _ = stored()
            now = time.time()
            if found and not first:
                first = now
            if found >= events:
                last = now
                break
            time.sleep(0.25)
        cpu_used = cpu_seconds(service.pid) - cpu0
        wall = time.time() - t0
    _, answered = stored()
    rate = events / (last - first) if last > first else 0.0
    return Run(rate, cpu.mean(first, last), cpu_used, wall, answered)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--time-scale", type=float, default=0.1)
    p.add_argument("--persons", type=int, default=10_000)
    p.add_argument("--tracks", type=int, default=200_000)
    p.add_argument("--fan-out", action="store_true", help="the fourth account takes every record")
    args = p.parse_args()
    calls = Calls(persons=args.persons, pool=min(args.persons, 10_000))
    ceiling = 150 / (60 * args.time_scale) * 1000  # one account's bulk-event limit, events/s
    share = factors(args.fan_out)
    copies_per_record = 2 if args.fan_out else 1
    records = args.persons + args.tracks
    scale = {"KLAVIYO_RATE_TIME_SCALE": str(args.time_scale)}
    sandbox_accounts = tuple(f"--account={name}:{KEYS[name]}:{share[name]}" for name in ACCOUNTS)
    with Broker(args.bootstrap) as broker, tempfile.TemporaryDirectory() as files:
        topic = broker.topic("bench-accounts", partitions=3)
        publish_backlog(broker.bootstrap, topic, calls, args.persons, args.tracks, args.fan_out)
        extra = {
            **scale,
            "ACCOUNTS_FILE": str(accounts_file(Path(files) / "accounts.json", args.fan_out)),
            "KAFKA_GROUP_ID": f"bench-{topic}-accounts",
            **{f"BENCH_KEY_{n}": KEYS[name] for n, name in enumerate(ACCOUNTS)},
        }
        with SandboxProcess(
            rate_limits=True, time_scale=args.time_scale, extra=sandbox_accounts
        ) as sandbox:
            many = governed(
                broker.bootstrap, topic, sandbox, extra, ACCOUNTS,
                args.tracks * copies_per_record,
            )  # fmt: skip
        with SandboxProcess(rate_limits=True, time_scale=args.time_scale) as sandbox:
            extra = {**scale, "KAFKA_GROUP_ID": f"bench-{topic}-single"}
            one = governed(broker.bootstrap, topic, sandbox, extra, (), args.tracks)
    allowed = ceiling * sum(share.values())
    layout = (
        "3 accounts by header (1/3 of the limits each) + 1 fan-out account (full limits)"
        if args.fan_out
        else "4 accounts by header, 1/4 of the limits each"
    )
    print(f"machine: {machine()}")
    print(
        f"traffic: identifies of {args.persons:,} persons, then {args.tracks:,} events; "
        f"time scale {args.time_scale} (one account's bulk endpoint allows {ceiling:,.0f} "
        f"events/s)"
    )
    print(f"accounts: {layout}; {copies_per_record} account copies per record")
    for label, run, limit, copies in (
        ("4 accounts", many, allowed, copies_per_record),
        ("1 account ", one, ceiling, 1),
    ):
        print(
            f"{label}: delivered {run.delivered:,.0f} events/s = {run.delivered / limit:.3f} "
            f"of what the limits allow ({limit:,.0f}); CPU {run.cpu_share * 100:.0f} % of one "
            f"core; {records / run.cpu_used:,.0f} records and "
            f"{records * copies / run.cpu_used:,.0f} account copies per CPU-second "
            f"({run.cpu_used:.1f} CPU-s, {run.wall:.1f} s); "
            f"bulk requests {sum(run.answered.values()):,}, {run.answered.get('429', 0)} "
            "answered 429"
        )
    print(
        f"4 accounts / 1 account: records per CPU-second {one.cpu_used / many.cpu_used:.2f}, "
        f"account copies per CPU-second {one.cpu_used * copies_per_record / many.cpu_used:.2f}, "
        f"delivered share {many.delivered / allowed / (one.delivered / ceiling or 1):.2f}"
    )


if __name__ == "__main__":
    main()
