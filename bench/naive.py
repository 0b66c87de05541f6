"""Naive benchmark: the same traffic sent one request per event (`POST /api/events`, as the old
v1 Track integrations did), beside our batched, governed delivery, in the same run.

Both runs go through the service, the real broker and the sandbox with Klaviyo's real limits
(time-scaled by `--time-scale`, the governor told the same). Printed: both sustained rates and
our speed-up. Klaviyo's limits put the naive ceiling at 3,500/min ≈ 58 events/s.

    python bench/naive.py --time-scale 1 --batch-events 1000 --windows 1   # Klaviyo's real limits
    python bench/naive.py --time-scale 0.2 --batch-events 100 --windows 2  # quicker
"""

from __future__ import annotations

from common import governed_bench, machine, parser


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--time-scale", type=float, default=0.2)
    p.add_argument("--batch-events", type=int, default=100)
    p.add_argument("--windows", type=float, default=2.0, help="steady windows measured")
    args = p.parse_args()
    window = 60 * args.time_scale
    runs = {}
    for label, batch in (("naive, 1 event/request", 1), ("batched + governed", args.batch_events)):
        per_window = 3500 if batch == 1 else 150 * batch
        records = int(per_window * (args.windows + 3) * 1.3)
        runs[label] = governed_bench(args, batch, records, "bench-naive")
    print(f"machine: {machine()}")
    print(f"time scale {args.time_scale} (steady window {window:g} s)")
    for label, f in runs.items():
        print(
            f"{label:<24}: {f.rate:>8,.0f} events/s  ({f.of_ceiling:.3f} of its ceiling, "
            f"{f.throttled_share:.4f} answered 429)  on {f.endpoint}"
        )
    naive, ours = runs["naive, 1 event/request"], runs["batched + governed"]
    print(f"speed-up                : {ours.rate / naive.rate:>8.1f}x")


if __name__ == "__main__":
    main()
