"""The metrics table of docs/operations.md, generated from the metrics registry (a helper,
not a test).

`python -m tests.support.metrics_table` prints it; test_operations_page.py fails when the page's
copy differs, so the table can never miss a metric, a label or a changed meaning.
"""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from stream.telemetry import metrics

HEADER = "| metric | type | labels | meaning |\n| --- | --- | --- | --- |"


def metric_rows() -> list[str]:
    """One Markdown row per metric of `stream.telemetry.metrics`, in definition order (an
    alias, like BATCHES_SENT for REQUESTS, is one metric: one row)."""
    rows = []
    seen: set[int] = set()
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase) or id(metric) in seen:
            continue
        seen.add(id(metric))
        kind = metric._type  # prometheus_client has no public accessor for these three
        name = metric._name + {"counter": "_total", "info": "_info"}.get(kind, "")
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "—"
        rows.append(f"| `{name}` | {kind} | {labels} | {metric._documentation} |")
    return rows


def metrics_table() -> str:
    """The whole table, header included."""
    return "\n".join([HEADER, *metric_rows()])


if __name__ == "__main__":
    print(metrics_table())
