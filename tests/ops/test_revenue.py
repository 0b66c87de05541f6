"""`setup-metrics` and doctor's mapped-metrics line against the sandbox: what is set, what is
left because its metric was never sent, and a second run that has nothing to change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from stream.core.settings import SANDBOX_API_KEY
from stream.local.sandbox import SandboxConfig, SandboxThread
from tests.support.cli import clean_env, cli
from tests.support.sandbox import event, get, post


@pytest.fixture
def sandbox() -> Iterator[Any]:
    with SandboxThread(SandboxConfig(time_scale=0.01)) as running:
        yield running


def mapped_line(report: str) -> str:
    [line] = [line for line in report.splitlines() if "mapped metrics:" in line]
    return line


async def test_setup_metrics_points_the_mapped_metrics_at_ours_once(sandbox: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for metric in ("Placed Order", "Viewed Product"):  # a metric exists once an event did
            status, _, _ = await post(http, f"{sandbox.url}/api/events", event(metric))
            assert status == 202
        env = clean_env(klaviyo_base_url=sandbox.url, klaviyo_api_key=SANDBOX_API_KEY)
        before = mapped_line(cli(env, "doctor").stdout)
        assert before.startswith("✗ mapped metrics: 0 of 7 point at our metrics; elsewhere or "
                                 "unset: revenue (→ Placed Order)"), before  # fmt: skip
        assert before.endswith("→ fix: run klaviyo-stream setup-metrics")
        dry = cli(env, "setup-metrics", "--dry-run")
        assert dry.code == 0, dry.output
        assert "→ revenue: would point at Placed Order" in dry.stdout
        assert "- added_to_cart: Added to Cart not sent yet" in dry.stdout
        assert "2 change(s) to make" in dry.stdout
        done = cli(env, "setup-metrics")
        assert done.code == 0, done.output
        assert "✓ revenue: now Placed Order" in done.stdout and "2 of 2 changed" in done.stdout
        after = mapped_line(cli(env, "doctor").stdout)
        assert after.startswith("✓ mapped metrics: 2 of 7 point at our metrics; 5 of our"), after
        again = cli(env, "setup-metrics")
        assert "✓ revenue: Placed Order" in again.stdout and "0 change(s) needed" in again.stdout
        _, mapped, _ = await get(http, f"{sandbox.url}/api/mapped-metrics")
        async with http.get(f"{sandbox.url}/sandbox/requests") as resp:
            log = (await resp.json())["requests"]
    pointed = {m["id"] for m in mapped["data"] if m["relationships"]["metric"]["data"]}
    assert pointed == {"revenue", "viewed_product"}
    patches = [r for r in log if r["method"] == "PATCH"]
    assert len(patches) == 2, "one PATCH per mapped metric, the second run none"
