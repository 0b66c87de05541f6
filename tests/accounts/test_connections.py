"""A client and a governor per account, built by the single-account builders from each
account's settings: each request reaches its own account (its key, its revision), and the
shares of `auto` accounts follow the group's assignment while a fixed share stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.accounts.config import load_accounts
from stream.accounts.connections import AccountLinks
from stream.core.settings import Settings
from stream.klaviyo.client import EVENTS
from stream.local.sandbox import SandboxAccount, SandboxConfig, SandboxServer
from tests.support.destination import write_yaml
from tests.support.sandbox import event

KEYS = {"KEY_A": "pk_key_a_" + "1" * 20, "KEY_B": "pk_key_b_" + "2" * 20}


async def test_each_accounts_client_reaches_its_own_account_with_its_revision(
    tmp_path: Path,
) -> None:
    document = {
        "accounts": [
            {"name": "brand-a", "key": "env:KEY_A", "topics": ["a"], "rate-share": "auto"},
            {"name": "brand-b", "key": "env:KEY_B", "topics": ["b"], "revision": "2026-04-15",
             "rate-share": 0.25},
        ]
    }  # fmt: skip
    config = SandboxConfig(
        api_keys=(KEYS["KEY_A"],),
        accounts=(SandboxAccount("brand-b", (KEYS["KEY_B"],)),),
    )
    async with SandboxServer(config) as sandbox:
        settings = Settings(
            kafka_topics="a,b",
            accounts_file=write_yaml(tmp_path, "accounts.yaml", document),
            klaviyo_base_url=sandbox.url,
            klaviyo_revision="2026-07-15",
        )
        accounts = load_accounts(settings, KEYS)
        async with AccountLinks(settings, accounts, KEYS, max_connections=2) as links:
            assert list(links) == ["brand-a", "brand-b"]
            for name in links:
                await links[name].client.request("POST", EVENTS, event(unique_id=name))
            assert links["brand-a"].governor.share == 1.0  # auto: whole until the group is known
            assert links["brand-b"].governor.share == 0.25
            shares = links.follow([("a", 0), ("b", 0)], {"other": [("b", 1), ("b", 2)]})
            assert shares == {"brand-a": 0.98, "brand-b": 0.25}  # a fixed share stays
            assert links["brand-a"].settings.klaviyo_revision == "2026-07-15"
        default, brand_b = sandbox.sandbox, sandbox.account("brand-b")
        assert [e.unique_id for e in default.store.events] == ["brand-a"]
        assert [e.unique_id for e in brand_b.store.events] == ["brand-b"]
        assert [r["revision"] for r in brand_b.log.since(0)] == ["2026-04-15"]
        for name in links:  # every pool closed on exit
            with pytest.raises(RuntimeError, match="outside `async with`"):
                await links[name].client.request("POST", EVENTS, event())
