"""Each account's rate share follows where its partitions are: a replica holding all of an
account's partitions may use (nearly) all of its quota, one holding none keeps a little, and
over the group the shares of one account never add up to more than its quota."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from stream.accounts.shares import IDLE_SHARE, IDLE_TOTAL, TopicPartition, account_shares

TOPICS = {"brand-a": {"a"}, "brand-b": {"b"}, "both": {"a", "b"}}


def parts(topic: str, *numbers: int) -> list[TopicPartition]:
    return [(topic, n) for n in numbers]


def test_a_lone_replica_takes_every_accounts_whole_quota() -> None:
    shares = account_shares(TOPICS, parts("a", 0, 1, 2) + parts("b", 0), {})
    assert shares == {"brand-a": 1.0, "brand-b": 1.0, "both": 1.0}


def test_a_replica_holding_all_of_an_accounts_partitions_takes_all_but_the_idle_part() -> None:
    """Two replicas: this one holds topic a, the other topic b. 1 / members would give each
    account half its quota on the replica that has all its traffic."""
    mine, others = parts("a", 0, 1, 2), {"other": parts("b", 0, 1, 2)}
    shares = account_shares(TOPICS, mine, others)
    assert shares["brand-a"] == 1 - IDLE_SHARE  # the other replica keeps a little
    assert shares["brand-b"] == IDLE_SHARE  # deletions to every account, reclaimed held calls
    assert shares["both"] == 0.5
    theirs = account_shares(TOPICS, others["other"], {"me": mine})
    assert math.isclose(shares["brand-a"] + theirs["brand-a"], 1.0)


def test_partitions_are_counted_where_they_are() -> None:
    shares = account_shares(TOPICS, parts("a", 0), {"r2": parts("a", 1, 2), "r3": parts("b", 0)})
    assert math.isclose(shares["brand-a"], (1 - IDLE_SHARE) / 3)
    assert math.isclose(shares["both"], 1 / 4)


def test_without_the_groups_assignment_the_split_is_even_or_whole() -> None:
    assert account_shares(TOPICS, parts("a", 0), None, members=4) == dict.fromkeys(TOPICS, 0.25)
    assert account_shares(TOPICS, parts("a", 0), None) == dict.fromkeys(TOPICS, 1.0)


def test_an_account_whose_topics_nobody_holds_is_split_evenly() -> None:
    shares = account_shares({"late": {"c"}}, parts("a", 0), {"r2": parts("b", 0)})
    assert shares == {"late": 0.5}


def test_many_idle_members_keep_at_most_the_idle_total_together() -> None:
    others = {f"standby-{i}": [] for i in range(20)}
    shares = account_shares({"brand-a": {"a"}}, parts("a", 0), others)
    assert math.isclose(shares["brand-a"], 1 - IDLE_TOTAL)
    idle = account_shares({"brand-a": {"a"}}, [], {"holder": parts("a", 0), **others})
    assert math.isclose(idle["brand-a"], IDLE_TOTAL / 21)


members = st.integers(min_value=1, max_value=6)
assignments = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 5)), unique=True, max_size=18
)


@given(members, assignments, st.data())
def test_over_the_group_an_accounts_shares_add_up_to_its_whole_quota(
    size: int, partitions: list[TopicPartition], data: st.DataObject
) -> None:
    owners = data.draw(st.lists(st.integers(0, size - 1), min_size=len(partitions),
                                max_size=len(partitions)))  # fmt: skip
    held: dict[int, list[TopicPartition]] = {m: [] for m in range(size)}
    for tp, owner in zip(partitions, owners, strict=True):
        held[owner].append(tp)
    total = dict.fromkeys(TOPICS, 0.0)
    for member in range(size):
        others = {str(m): held[m] for m in range(size) if m != member}
        for account, share in account_shares(TOPICS, held[member], others).items():
            assert 0 < share <= 1
            total[account] += share
    for account, summed in total.items():
        assert math.isclose(summed, 1.0), (account, summed)
