"""A crash between a person's upsert and their subscription: nothing lost, nothing twice.

The service runs as a real process (`python -m stream run`) against the real broker. The
sandbox holds subscription requests unanswered while the rest of the API answers, so the
profile upsert is accepted and the subscription is on the wire when the process is killed
(SIGKILL: nothing flushed, nothing committed). The held request's client is gone, so it is never
applied; the restarted service reads the record again and sends the subscription once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream.local.sandbox import SandboxConfig, SandboxThread, SeedList
from tests.support import sandbox_get, wait_until
from tests.support.consent import SUBSCRIBE, call, consent_jobs, klaviyo, members, publish
from tests.support.harness import (
    ServiceProcess,
    committed_lag,
    service_env,
    state_dir,
    topic_size,
)
from tests.support.sandbox import faults


async def test_a_crash_between_upsert_and_subscribe_loses_nothing_and_sends_nothing_twice(
    kafka_bootstrap: str, topic_factory: Any, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    signup = call("identify", 1, userId="u-ada", traits={"email": "ada@example.com"},
                  integrations=klaviyo(subscribe={"email": True, "list_id": "NEWS01"}))  # fmt: skip
    publish(kafka_bootstrap, topic, [signup])
    config = SandboxConfig(rate_limits=False, lists=(SeedList("NEWS01", "Newsletter"),))
    with SandboxThread(config) as sandbox:
        url = sandbox.url
        env = service_env(
            kafka_bootstrap, topic, url, state_dir(),
            shutdown_timeout_seconds=2, kafka_group_instance_id="consent-crash",
        )  # fmt: skip
        service = ServiceProcess(env, tmp_path / "service.log")
        await faults(url, hold=True, operations=["bulk_subscribe_profiles"])
        service.start()
        try:

            async def upserted_and_subscribing() -> bool:
                assert service.alive, service.log()[-3000:]
                waiting = (await sandbox_get(url, "/sandbox/faults"))["waiting"]
                profiles = (await sandbox_get(url, "/sandbox/profiles"))["profiles"]
                return waiting == 1 and len(profiles) == 1

            await wait_until(upserted_and_subscribing, timeout=60, what="upsert in, subscribe out")
            service.kill()
            await faults(url, hold=False)  # its client is gone: never applied
            assert await consent_jobs(url) == []
            assert committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 1  # not committed
            service.start()

            async def finished() -> bool:
                assert service.alive, service.log()[-3000:]
                return committed_lag(kafka_bootstrap, f"group-{topic}", topic) == 0

            await wait_until(finished, timeout=90, what="the record finished after the restart")
            assert service.terminate() == 0
        finally:
            service.stop_quietly()
        [profile] = (await sandbox_get(url, "/sandbox/profiles"))["profiles"]
        jobs = await consent_jobs(url, "subscribe")
        news = await members(url, "NEWS01")
        log = (await sandbox_get(url, "/sandbox/requests"))["requests"]

    assert profile["attributes"]["external_id"] == "u-ada"
    assert profile["consent"]["email.marketing"]["state"] == "subscribed"
    assert news == [profile["id"]]
    assert len(jobs) == 1  # sent once after the crash, never twice
    statuses = [r["status"] for r in log if r["path"].rstrip("/") == SUBSCRIBE]
    assert statuses == ["dropped", 202]  # the one the crash cut off, and the one sent again
    assert topic_size(kafka_bootstrap, f"{topic}-dlq") == 0
