"""Summarize a py-spy raw profile: each function's inclusive share of the service's samples.

py-spy samples with almost no overhead (pyinstrument and cProfile inflate small functions):

    pip install py-spy
    py-spy record -f raw -r 200 -o spy.txt -- python bench/pipeline.py --records 200000
    python bench/spy_report.py spy.txt [--top 40] [--all]

Only stacks that pass through `stream/engine/service.py` count (the benchmark's own publishing and
baseline phases are left out); `--all` counts every sample (a profile of the service's own
process, `py-spy record -p PID`, as `bench/mix.py --spy` takes: the send stage's and aiohttp's
tasks do not pass through service.py).
"""

from __future__ import annotations

import argparse
from collections import Counter


def frame_name(frame: str) -> str:
    """`handle (stream/engine/service.py:201)` → `handle stream/engine/service.py`."""
    name, _, where = frame.partition(" (")
    return f"{name} {where.split(':')[0]}" if where else name


def shares(raw: str, top: int = 40, everything: bool = False) -> list[str]:
    """Lines `share %  function file`, largest first, of `stream/` functions."""
    inclusive: Counter[str] = Counter()
    total = 0
    with open(raw) as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            if not everything and not any("stream/engine/service.py" in f for f in frames):
                continue
            total += int(count)
            for name in {frame_name(f) for f in frames}:
                inclusive[name] += int(count)
    out = [f"{total} samples" + ("" if everything else " in the service")]
    for name, count in inclusive.most_common(top):
        if "stream/" in name or everything:
            out.append(f"{count / max(total, 1) * 100:5.1f} %  {name}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("raw", help="py-spy output written with -f raw")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--all", action="store_true", help="every sample, not only the service's")
    args = p.parse_args()
    for line in shares(args.raw, args.top, args.all):
        print(line)


if __name__ == "__main__":
    main()
