"""docs/operations.md lists every metric exactly as the registry defines it, and every alert."""

from __future__ import annotations

from tests.support.metrics_table import metric_rows
from tests.support.prometheus import ROOT, alert_rules


def operations_page() -> str:
    return (ROOT / "docs" / "operations.md").read_text()


def test_metrics_table_matches_the_registry() -> None:
    page = operations_page()
    missing = [row for row in metric_rows() if row not in page]
    assert not missing, "docs/operations.md's metrics table is stale; regenerate it with " + (
        "`python -m tests.support.metrics_table`:\n" + "\n".join(missing)
    )


def test_every_alert_is_documented() -> None:
    page = operations_page()
    assert all(f"`{rule['alert']}`" in page for rule in alert_rules())
