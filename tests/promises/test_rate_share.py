"""`KLAVIYO_RATE_SHARE=auto`: each replica takes 1/members of the account's Klaviyo quota, and
follows the group as replicas come and go (kubectl scale), so N replicas never ask for more
than the quota whatever N is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stream.local.sandbox import SandboxConfig, SandboxThread
from tests.support import free_port, wait_until
from tests.support.harness import ServiceProcess, metric, service_env, state_dir


@pytest.mark.slow
async def test_the_share_follows_the_group_size(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path, clean_redis_url: str
) -> None:
    topic = topic_factory(partitions=2)
    ports = [free_port(), free_port()]
    with SandboxThread(SandboxConfig(rate_limits=False)) as sandbox:
        members = [
            ServiceProcess(
                service_env(
                    kafka_bootstrap, topic, sandbox.url, state_dir(), state_url=clean_redis_url,
                    klaviyo_rate_share="auto", metrics_port=port,
                ),
                tmp_path / f"member-{n}.log",
            )
            for n, port in enumerate(ports)
        ]

        def share_is(port: int, expected: float, member: ServiceProcess) -> Any:
            async def check() -> bool:
                assert member.alive, member.log()[-3000:]
                return await metric(port, "klaviyo_stream_rate_share") == expected

            return check

        try:
            members[0].start()
            await wait_until(share_is(ports[0], 1.0, members[0]), timeout=60, what="alone: all")
            members[1].start()
            for port, member in zip(ports, members, strict=True):
                await wait_until(share_is(port, 0.5, member), timeout=60, what="two: a half")
            assert members[1].terminate() == 0
            await wait_until(share_is(ports[0], 1.0, members[0]), timeout=60, what="alone again")
            assert members[0].terminate() == 0
        finally:
            for member in members:
                member.stop_quietly()
