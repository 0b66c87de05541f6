"""Each account's way to Klaviyo: its effective settings, its client and its governor.

`AccountLinks` builds them from the same builders the single-account service uses
(`build_client`, `build_governor`), fed with the account's settings (`Account.settings`: its
key, revision, mode and share), so the two cases cannot drift apart. Open it with `async
with` (every client's connection pool; all closed if one fails to open). `follow` applies
`stream.accounts.shares` to the accounts whose share is `auto`; a number stays as set.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from stream.accounts.config import Account, Accounts
from stream.accounts.shares import TopicPartition, account_shares
from stream.core.settings import Settings
from stream.engine.pipeline import build_client, build_governor
from stream.klaviyo.client import KlaviyoClient
from stream.klaviyo.governor import Governor


@dataclass(frozen=True, slots=True)
class AccountLink:
    """One account's settings (as `Account.settings` gives them), client and governor."""

    account: Account
    settings: Settings
    client: KlaviyoClient
    governor: Governor


class AccountLinks(Mapping[str, AccountLink]):
    """account name → its `AccountLink`, in the accounts file's order."""

    def __init__(
        self,
        settings: Settings,
        accounts: Accounts,
        environ: Mapping[str, str] | None = None,
        **client_options: Any,
    ) -> None:
        self._accounts = accounts
        self._topics = (*settings.kafka_topics, *settings.catalog_topics)
        self._links: dict[str, AccountLink] = {}
        for account in accounts:
            own = account.settings(settings, environ)
            self._links[account.name] = AccountLink(
                account, own, build_client(own, **client_options), build_governor(own)
            )

    def __getitem__(self, name: str) -> AccountLink:
        return self._links[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._links)

    def __len__(self) -> int:
        return len(self._links)

    async def __aenter__(self) -> AccountLinks:
        opened: list[KlaviyoClient] = []
        try:
            for link in self._links.values():
                await link.client.__aenter__()
                opened.append(link.client)
        except BaseException:
            for client in opened:
                await client.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for link in self._links.values():
            await link.client.close()

    def follow(
        self,
        mine: Collection[TopicPartition],
        others: Mapping[str, Collection[TopicPartition]] | None,
        members: int | None = None,
    ) -> dict[str, float]:
        """Set the share of every `auto` account from the group's assignment (see
        `account_shares`); returns every account's share now (for the `rate_share` gauge)."""
        auto = {
            name: self._accounts.topics_of(name, self._topics)
            for name, link in self._links.items()
            if link.account.rate_share == "auto"
        }
        for name, share in account_shares(auto, mine, others, members=members).items():
            self._links[name].governor.set_share(share)
        return {name: link.governor.share for name, link in self._links.items()}
