"""A real Prometheus server for tests (a helper, not a test module).

`PrometheusHarness(targets).start()` runs the `prometheus` binary on a free loopback port with a
generated config that scrapes `targets` (``host:port`` strings) every second under the job name
the shipped alerts use (`klaviyo-stream`), with monitoring/alerts.yml as its rule file. Its HTTP
API is then queried with `query(expr)`; `wait_for_series(expr, timeout)` polls until the
expression returns something. The calls block (stdlib urllib): from async tests, run them with
`asyncio.to_thread` so the event loop keeps serving the scraped endpoints.

Also here: the PromQL expressions of the shipped dashboard and alert rules, so the tests that
lint them and the tests that evaluate them read the same list.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "klaviyo-stream.json"
JOB = "klaviyo-stream"
TARGETS_FILE = "targets/consumers.yml"  # matches the consumer job's file_sd glob

# Grafana's built-in variables and ours, replaced by values Prometheus accepts.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${instance}": ".*",
    "$instance": ".*",
}


class PrometheusError(RuntimeError):
    """Prometheus answered an API call with an error (bad PromQL, evaluation failure)."""


def find_binary(name: str) -> str | None:
    """`$PROMETHEUS_BIN` / `$PROMTOOL_BIN` if set, else the binary on PATH (apt: /usr/bin)."""
    return os.environ.get(f"{name.upper()}_BIN") or shutil.which(name)


def in_ci() -> bool:
    """CI sets `CI=true` (GitHub Actions, GitLab, our .ci/run): nothing may be skipped there."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def needs_binary(name: str) -> pytest.MarkDecorator:
    """Skip when `name` is not installed on a developer machine; in CI, run and fail instead,
    so a missing `apt-get install prometheus` can never turn these tests into silent skips."""
    return pytest.mark.skipif(
        find_binary(name) is None and not in_ci(),
        reason=f"{name} not installed (apt-get install -y prometheus); CI=true makes this fail",
    )


def require_binary(name: str) -> str:
    """The binary's path, or a test failure naming the package to install."""
    path = find_binary(name)
    if path is None:
        pytest.fail(f"{name} binary not found: apt-get install -y prometheus (scripts/test does)")
    return path


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana template variables with concrete values (longest names first)."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def _walk_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _walk_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_exprs(item)


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every panel target's `expr` (nested rows included), Grafana variables still in place."""
    return list(_walk_exprs(json.loads(path.read_text())))


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    """Every rule (alerting or recording) of every group in a Prometheus rules file."""
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alert_expressions(path: Path = ALERTS) -> list[str]:
    """The `expr` of every rule in a Prometheus rules file."""
    return [str(rule["expr"]) for rule in alert_rules(path)]


class PrometheusHarness:
    """One Prometheus process with its own config and TSDB in a temporary directory."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        rule_files: Sequence[Path] = (ALERTS,),
        job: str = JOB,
        scrape_interval: str = "1s",
        binary: str | None = None,
    ) -> None:
        self.targets = list(targets)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.job = job
        self.scrape_interval = scrape_interval
        self.binary = binary or find_binary("prometheus")
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server's HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """monitoring/prometheus.yml as shipped, pointed at `targets` and sped up.

        The consumer job keeps its name, path, relabelling and file_sd discovery; only its
        Docker DNS discovery is dropped (no `consumer` host here) and its `targets/*.yml`,
        relative to the config file as in production, is written by `start()`. Intervals
        become `scrape_interval` and rule files absolute paths; the self-scrape job points
        at this server's port.
        """
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        timing = {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval}
        config["global"].update(timing, evaluation_interval=self.scrape_interval)
        config["rule_files"] = [str(p) for p in self.rule_files]
        jobs = []
        for job in config["scrape_configs"]:
            if job["job_name"] == JOB:
                job.pop("dns_sd_configs", None)
                job.update(timing, job_name=self.job)
                jobs.append(job)
            elif job["job_name"] == "prometheus":
                job["static_configs"] = [{"targets": [f"127.0.0.1:{self.port}"]}]
                jobs.append(job)
        config["scrape_configs"] = jobs
        return config

    def target_files(self) -> dict[str, Any]:
        """The file_sd target files the consumer job reads, by path relative to the config."""
        return {TARGETS_FILE: [{"targets": self.targets, "labels": {"deployment": "test"}}]}

    def start(self, timeout: float = 30.0) -> PrometheusHarness:
        """Launch the server and return once `/-/ready` answers 200 (retry if the port is taken)."""
        if self.binary is None:
            self.binary = require_binary("prometheus")
        self._dir = Path(tempfile.mkdtemp(prefix="prometheus-harness-"))
        config = self._dir / "prometheus.yml"
        for name, content in self.target_files().items():
            (self._dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self._dir / name).write_text(yaml.safe_dump(content, sort_keys=False))
        for _attempt in range(3):
            self.port = free_port()
            config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            log = (self._dir / "prometheus.log").open("wb")
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
            )
            log.close()
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.log():
                break
        log_text = self.log()
        self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{log_text[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        return False

    def log(self) -> str:
        """What the server printed so far (for failure messages)."""
        if self._dir is None or not (self._dir / "prometheus.log").exists():
            return ""
        return (self._dir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """GET `/api/v1/<path>` and return its `data`; raise `PrometheusError` on an error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422/503 carry a JSON error body
            try:
                body = json.load(exc)
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {exc.code}") from exc
            finally:
                exc.close()
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} ({params})")
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        """Evaluate an instant query now: the vector's samples, or a scalar/string as one item."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [result]
        return list(result)

    def wait_for_series(self, expr: str, timeout: float = 30.0, poll: float = 0.2) -> list[Any]:
        """Poll `query(expr)` until it returns at least one sample; `TimeoutError` otherwise."""
        deadline = time.monotonic() + timeout
        last: list[Any] = []
        while True:
            last = self.query(expr)
            if last:
                return last
            if time.monotonic() >= deadline:
                targets = [
                    (t.get("scrapeUrl"), t.get("health"), t.get("lastError"))
                    for t in self.api("targets").get("activeTargets", [])
                ]
                raise TimeoutError(f"no series for {expr!r} after {timeout}s; targets: {targets}")
            time.sleep(poll)

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its `health`, `lastError` and `lastEvaluation`."""
        groups = self.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def stop(self) -> None:
        """Terminate the server (kill after 10 s) and delete its directory; idempotent."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrometheusHarness:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
