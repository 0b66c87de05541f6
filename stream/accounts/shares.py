"""Each account's rate share for this replica: it follows where the account's traffic is.

Klaviyo's quota is per account; every replica of the group sends to every account it has
records for. Splitting each account's quota by 1 / members (`KLAVIYO_RATE_SHARE=auto` of a
single account) starves an account whose topics sit on one replica. Here a replica's share
of an account is its part of that account's partitions: the partitions of the topics the
account's records come from (`Accounts.topics_of`), counted over the group's assignment.

- a replica holding all of an account's partitions takes the whole quota, less what idle
  members keep;
- a member holding none of them keeps `IDLE_SHARE` (for deletions that go to every account
  and held calls it reclaims), all idle members together at most `IDLE_TOTAL`;
- the shares of one account over the group add up to 1, so no account sees more than its
  limit whatever the assignment;
- when the group's assignment is unknown: 1 / members (today's `auto`), or 1 when the size
  is unknown too (the service asks again at once).

Partitions count alike (an account's records spread evenly over its partitions). Pure: the
engine passes the assignment it read (`describe_consumer_groups`) and applies the result.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

TopicPartition = tuple[str, int]

IDLE_SHARE = 0.02  # of an account's quota, per member that holds none of its partitions
IDLE_TOTAL = 0.1  # what all idle members of one account keep together, at most


def account_shares(
    topics: Mapping[str, Collection[str]],
    mine: Collection[TopicPartition],
    others: Mapping[str, Collection[TopicPartition]] | None,
    *,
    members: int | None = None,
    idle: float = IDLE_SHARE,
    idle_total: float = IDLE_TOTAL,
) -> dict[str, float]:
    """This replica's share of each account's quota, in (0, 1].

    `topics`: account → the topics its records come from; `mine`: this replica's assigned
    partitions; `others`: every other member's (member id → partitions; None: unknown);
    `members`: the group's size, used only when `others` is unknown."""
    if others is None:
        even = 1.0 / members if members else 1.0
        return dict.fromkeys(topics, even)
    return {
        account: _share(frozenset(names), mine, others.values(), idle, idle_total)
        for account, names in topics.items()
    }


def _share(
    topics: frozenset[str],
    mine: Collection[TopicPartition],
    others: Collection[Collection[TopicPartition]],
    idle: float,
    idle_total: float,
) -> float:
    mine_count = sum(1 for topic, _ in mine if topic in topics)
    counts = [sum(1 for topic, _ in held if topic in topics) for held in others]
    total = mine_count + sum(counts)
    if total == 0:  # nobody holds its topics (not assigned yet): an even split
        return 1.0 / (1 + len(counts))
    idlers = sum(1 for c in counts if c == 0) + (mine_count == 0)
    each = min(idle, idle_total / idlers) if idlers else 0.0
    if mine_count == 0:
        return each
    return (1.0 - each * idlers) * mine_count / total
