"""Governor benchmark: sustained delivered events/s against Klaviyo's real (time-scaled) limits.

The sandbox enforces Klaviyo's fixed burst (1 s) and steady (60 s) windows, shrunk by
`--time-scale`; the service's governor is told the same scale. A backlog keeps every batch full.
Printed: delivered events/s as a fraction of the theoretical ceiling (steady limit × events per
request), and the share of requests answered 429.

    python bench/governor.py --time-scale 0.2 --batch-events 100 --windows 3
"""

from __future__ import annotations

from common import governed_bench, machine, parser


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--time-scale", type=float, default=0.2)
    p.add_argument("--batch-events", type=int, default=100)
    p.add_argument("--windows", type=float, default=3.0, help="steady windows measured")
    args = p.parse_args()
    window = 60 * args.time_scale
    ceiling_rate = 150 / window * args.batch_events
    records = int(ceiling_rate * window * (args.windows + 3) * 1.3)
    figures = governed_bench(args, args.batch_events, records, "bench-governor")
    print(f"machine: {machine()}")
    print(
        f"limits: {figures.endpoint} 10/s burst, 150/min steady, time scale {args.time_scale} "
        f"(steady window {window:g} s), {args.batch_events} events per request"
    )
    print(f"measured over          : {figures.seconds:.1f} s ({args.windows:g} steady windows)")
    print(f"delivered              : {figures.rate:,.0f} events/s")
    print(f"ceiling                : {figures.ceiling_events / figures.seconds:,.0f} events/s")
    print(f"fraction of ceiling    : {figures.of_ceiling:.3f}")
    print(
        f"429 share              : {figures.throttled_share:.4f} "
        f"({figures.throttled} of {figures.requests} requests)"
    )


if __name__ == "__main__":
    main()
