"""Routing a record to accounts (issue 22): CPU per routed record, against the single account.

No broker, no sandbox: `stream.accounts.routing.route` on decoded calls, the cost the engine
adds per record with an accounts file. Cases: no file (the implicit account); 3 accounts by
topic; 3 by the `klaviyo-account` header; 3 by a field of the call (`context.groupId`, the
record's account last in file order: the worst case); 20 accounts by field with a fan-out
account; and a delete to every one of 20 accounts. Prints µs per record and the ratio to
the no-file case, all measured in this run.

    python bench/routing.py [--records 200000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.accounts.config import Accounts, implicit_accounts, read_accounts_file  # noqa: E402
from stream.accounts.routing import route  # noqa: E402
from stream.core.calls import Call, Headers  # noqa: E402
from stream.core.settings import Settings

TOPICS = "analytics,t0,t1,t2"


def accounts_file(directory: Path, accounts: list[dict[str, Any]]) -> Accounts:
    path = directory / f"accounts-{len(list(directory.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"accounts": accounts}))
    return read_accounts_file(str(path), Settings(kafka_topics=TOPICS))


def per_record(
    accounts: Accounts, topic: str, headers: Headers | None, call: Call, n: int
) -> float:
    """CPU-µs per route() call, best of three rounds of `n`."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(n):
            route(accounts, topic, headers, call)
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    n = parser.parse_args().records
    track = Call("track", "m", "2026-07-15T00:00:00Z", user_id="u", event="Placed Order",
                 context={"groupId": "g2"})  # fmt: skip
    delete = Call("delete", "d", "2026-07-15T00:00:00Z", user_id="u")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def key(i: int) -> str:
            return f"env:K{i}"

        by_topic = accounts_file(folder, [{"name": f"a{i}", "key": key(i), "topics": [f"t{i}"]}
                                          for i in range(3)])  # fmt: skip
        by_header = accounts_file(folder, [{"name": f"a{i}", "key": key(i), "header": True}
                                           for i in range(3)])  # fmt: skip
        by_field = accounts_file(folder, [{"name": f"a{i}", "key": key(i),
                                           "field": "context.groupId", "equals": f"g{i}"}
                                          for i in range(3)])  # fmt: skip
        twenty = [{"name": f"a{i}", "key": key(i), "field": "context.groupId", "equals": f"g{i}"}
                  for i in range(19)]  # fmt: skip
        twenty.append({"name": "audit", "key": key(99), "match": "all", "fan-out": True})
        fan_out = accounts_file(folder, twenty)
        cases = [
            ("no accounts file", implicit_accounts(Settings()), "analytics", None, track),
            ("3 accounts by topic", by_topic, "t2", None, track),
            ("3 accounts by header", by_header, "analytics", [("klaviyo-account", b"a2")], track),
            ("3 accounts by field (last)", by_field, "analytics", None, track),
            ("20 accounts by field + fan-out", fan_out, "analytics", None, track),
            ("delete to every one of 20", fan_out, "analytics", None, delete),
        ]
        base = 0.0
        print(f"{'case':34} {'µs/record':>10} {'× no file':>10}  accounts")
        for name, accounts, topic, headers, call in cases:
            cost = per_record(accounts, topic, headers, call, n)
            base = base or cost
            chosen = ",".join(route(accounts, topic, headers, call).accounts)
            print(f"{name:34} {cost:10.2f} {cost / base:10.1f}  {chosen[:40]}")


if __name__ == "__main__":
    main()
