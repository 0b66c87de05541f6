"""The README's Operations section lists every metric exactly as the registry defines it."""

from __future__ import annotations

from tests.support.metrics_table import metric_rows
from tests.support.prometheus import ROOT, alert_rules


def operations_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert "\n## Operations\n" in text
    return text.split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]


def test_metrics_table_matches_the_registry() -> None:
    section = operations_section()
    missing = [row for row in metric_rows() if row not in section]
    assert not missing, "README metrics table is stale; regenerate it with " + (
        "`python -m tests.support.metrics_table`:\n" + "\n".join(missing)
    )


def test_every_alert_is_documented() -> None:
    section = operations_section()
    assert all(f"`{rule['alert']}`" in section for rule in alert_rules())
