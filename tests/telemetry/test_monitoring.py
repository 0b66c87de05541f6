"""The shipped monitoring files: valid for Prometheus, and naming only metrics that exist.

A dashboard panel or alert on a misspelt metric shows "no data" / never fires: silently wrong.
So every `klaviyo_stream_*` identifier in them must be a series the registry can expose.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from stream.telemetry.metrics import REGISTRY
from tests.support.prometheus import (
    ALERTS,
    DASHBOARD,
    MONITORING,
    PROMETHEUS_CONFIG,
    ROOT,
    alert_expressions,
    alert_rules,
    dashboard_expressions,
    needs_binary,
    require_binary,
)

METRIC_NAME = re.compile(r"\bklaviyo_stream_[a-zA-Z0-9_:]*")

# Series a family of each type exposes, as suffixes of the family name (prometheus_client).
SUFFIXES = {
    "counter": ("_total",),  # no _created series: metrics.py disables them
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}

needs_promtool = needs_binary("promtool")


def exposed_series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's families can expose, whether or not a label set exists
    yet (a labelled family with no children yields no samples, so samples are not enough)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_registry_names_cover_the_known_families() -> None:
    names = exposed_series_names(REGISTRY)
    assert "klaviyo_stream_records_consumed_total" in names
    assert "klaviyo_stream_request_duration_seconds_bucket" in names
    assert "klaviyo_stream_last_commit_timestamp_seconds" in names


@pytest.mark.parametrize(
    ("source", "expressions"),
    [("dashboard", dashboard_expressions()), ("alerts", alert_expressions())],
)
def test_every_metric_name_referenced_exists(source: str, expressions: list[str]) -> None:
    assert expressions, f"{source}: no expressions found"
    known = exposed_series_names(REGISTRY)
    referenced = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert referenced, f"{source}: references no klaviyo_stream_ metric"
    unknown = referenced - known
    assert not unknown, f"{source} names metrics telemetry/metrics.py does not define: {unknown}"


def test_dashboard_covers_the_agreed_panels() -> None:
    text = DASHBOARD.read_text()
    for metric in (
        "records_consumed_total",
        "records_sent_total",
        "request_duration_seconds_bucket",
        "requests_total",
        "dead_letters_total",
        "consumer_lag_records",
        "governor_wait_seconds_total",
        "rate_limited_total",
        "identity_links_total",
        "profile_merges_total",
        "records_held_total",
        "records_deduplicated_total",
        "catalog_resources_total",
        "catalog_recovered_total",
        "catalog_jobs_in_progress",
        "catalog_job_duration_seconds_bucket",
        "catalog_pending_records",
    ):
        assert f"klaviyo_stream_{metric}" in text, metric
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text


def _datasource_refs(node: object) -> list[dict[str, str]]:
    """Every `datasource` reference in the dashboard: panels, targets, variables."""
    found: list[dict[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                found.append(value)
            else:
                found.extend(_datasource_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_datasource_refs(value))
    return found


def test_dashboard_takes_its_datasource_as_a_variable() -> None:
    """Imported into any Grafana, the dashboard asks for a Prometheus datasource instead of
    pointing at a uid only our provisioning has."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    refs = _datasource_refs(dashboard)
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len(refs) >= len(panels)  # every panel (and its targets) names one
    assert {(r["type"], r["uid"]) for r in refs} == {("prometheus", "${datasource}")}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_provisioned_datasource_is_the_default_the_variable_picks() -> None:
    datasources = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["isDefault"] is True


def test_dashboard_provisioning_path_is_where_compose_mounts_the_json() -> None:
    providers = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/dashboards.yml").read_text()
    )["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in compose["services"]["grafana"]["volumes"]
    }
    for provider in providers:
        source = mounts[provider["options"]["path"]]
        assert (ROOT / source / DASHBOARD.name).is_file()


def test_every_alert_has_severity_and_summary() -> None:
    rules = alert_rules()
    assert {
        "KlaviyoStreamReplicaDown",
        "KlaviyoStreamConsumerLagGrowing",
        "KlaviyoStreamNoRecentCommit",
        "KlaviyoStreamDeadLetterRateHigh",
        "KlaviyoStreamKlaviyoErrorRate",
        "KlaviyoStreamSustained429",
        "KlaviyoStreamCatalogDeadLetters",
        "KlaviyoStreamCatalogJobsSlow",
        "KlaviyoStreamCatalogJobsNotCompleting",
        "KlaviyoStreamCatalogPendingNotDraining",
    } <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_prometheus_config_scrapes_the_consumer_replicas() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "klaviyo-stream")
    dns = job["dns_sd_configs"][0]
    assert dns["names"] == ["consumer"] and dns["port"] == 9400 and dns["type"] == "A"
    assert job["file_sd_configs"], "static fallback targets"
    assert config["rule_files"] == [ALERTS.name]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_promtool
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_binary_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert needs_binary("no-such-binary-here").args[0] is False  # no skip: the test runs
    with pytest.raises(pytest.fail.Exception, match="apt-get install"):
        require_binary("no-such-binary-here")
    monkeypatch.setenv("CI", "")
    assert needs_binary("no-such-binary-here").args[0] is True
