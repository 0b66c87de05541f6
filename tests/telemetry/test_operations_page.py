"""docs/operations.md lists every metric exactly as the registry defines it, and every alert."""

from __future__ import annotations

import re

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


def test_every_runbook_url_names_a_heading_of_a_doc_page() -> None:
    """An alert's runbook pointer (`docs/<page>.md#<anchor>`) leads to a heading that exists:
    a renamed heading would leave the operator on the top of a long page."""
    pointers = {r["alert"]: r["annotations"]["runbook_url"] for r in alert_rules()
                if "runbook_url" in r["annotations"]}  # fmt: skip
    assert {a for a in pointers if a.startswith("KlaviyoStreamCatalog")} == {
        "KlaviyoStreamCatalogDeadLetters",
        "KlaviyoStreamCatalogJobsSlow",
        "KlaviyoStreamCatalogJobsNotCompleting",
        "KlaviyoStreamCatalogPendingNotDraining",
    }
    for alert, pointer in pointers.items():
        page, _, anchor = pointer.partition("#")
        headings = re.findall(r"^#+ (.+)$", (ROOT / page).read_text(), re.MULTILINE)
        anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
        assert anchor in anchors, (alert, pointer)
