"""`klaviyo-stream status`: the consumer group as Kafka sees it.

Members and their assignment (DescribeConsumerGroups), per partition of the configured topics
the committed offset (OffsetFetch), the end offset (ListOffsets, latest) and the lag between
them, the time of the last commit (`stream.ops.commits`), and the dead-letter topic's size.
Nothing here joins the group or commits: it is safe against a running service.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from stream.core.errors import StatusError
from stream.ops.commits import last_commit_times


@dataclass
class PartitionStatus:
    """One partition: committed offset (None: never committed), end offset, lag, last commit."""

    topic: str
    partition: int
    committed: int | None
    start: int
    end: int
    lag: int
    last_commit: float | None = None


@dataclass
class MemberStatus:
    """One member of the group and the partitions assigned to it."""

    member_id: str
    client_id: str
    host: str
    instance_id: str | None
    assignment: list[str]


@dataclass
class GroupStatus:
    """Everything `status` prints; `to_json()` for `--json`."""

    group: str
    state: str
    members: list[MemberStatus]
    partitions: list[PartitionStatus]
    dlq_topic: str
    dlq_records: int | None  # None: the dead-letter topic does not exist (yet)
    missing_topics: list[str] = field(default_factory=list)
    commit_times_known: bool = True

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def last_commit(self) -> float | None:
        times = [p.last_commit for p in self.partitions if p.last_commit is not None]
        return max(times) if times else None

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        last = self.last_commit
        return {
            **asdict(self),
            "lag": self.lag,
            "last_commit": last,
            "seconds_since_last_commit": None if last is None else round(now - last, 3),
        }


def group_status(
    kafka_config: dict[str, Any],
    group: str,
    topics: tuple[str, ...],
    dlq_topic: str,
    timeout: float = 10.0,
) -> GroupStatus:
    """Ask the broker; raise `StatusError` with a one-line reason when it cannot answer."""
    admin = AdminClient(kafka_config)
    try:
        metadata = admin.list_topics(timeout=timeout)
        described = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result()
        committed_result = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
        )[group].result()
        tps = [
            TopicPartition(t, p)
            for t in topics
            if t in metadata.topics
            for p in sorted(metadata.topics[t].partitions)
        ]
        dlq_tps = [
            TopicPartition(dlq_topic, p)
            for p in sorted(metadata.topics[dlq_topic].partitions)
        ] if dlq_topic in metadata.topics else []
        ends = _offsets(admin, tps + dlq_tps, OffsetSpec.latest(), timeout)
        starts = _offsets(admin, tps + dlq_tps, OffsetSpec.earliest(), timeout)
    except KafkaException as exc:
        raise StatusError(f"the broker did not answer: {exc.args[0].str()}") from None
    finally:
        admin.poll(0)  # serve librdkafka's log lines queued meanwhile
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in committed_result.topic_partitions or []
        if tp.offset >= 0
    }
    commit_times = last_commit_times(kafka_config, group, timeout, wanted=set(committed))
    partitions = []
    for tp in tps:
        key = (tp.topic, tp.partition)
        done = committed.get(key)
        start, end = starts[key], ends[key]
        partitions.append(
            PartitionStatus(
                tp.topic,
                tp.partition,
                done,
                start,
                end,
                max(end - (done if done is not None else start), 0),
                (commit_times or {}).get(key),
            )
        )
    members = [
        MemberStatus(
            m.member_id,
            m.client_id,
            m.host,
            m.group_instance_id,
            sorted(f"{tp.topic}[{tp.partition}]" for tp in m.assignment.topic_partitions),
        )
        for m in described.members
    ]
    return GroupStatus(
        group=group,
        state=_state_name(described.state),
        members=members,
        partitions=partitions,
        dlq_topic=dlq_topic,
        dlq_records=sum(ends[k] - starts[k] for k in ends if k[0] == dlq_topic)
        if dlq_tps
        else None,
        missing_topics=[t for t in topics if t not in metadata.topics],
        commit_times_known=commit_times is not None,
    )


def _offsets(
    admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec, timeout: float
) -> dict[tuple[str, int], int]:
    if not tps:
        return {}
    futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=timeout)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def _state_name(state: Any) -> str:
    name = getattr(state, "name", None)
    return str(name if name is not None else state).lower()


def format_status(status: GroupStatus, now: float | None = None) -> str:
    """The text `status` prints."""
    now = time.time() if now is None else now
    last = status.last_commit
    since = (
        "unknown (no read access to __consumer_offsets)"
        if not status.commit_times_known
        else "never" if last is None else f"{_duration(now - last)} ago"
    )
    lines = [
        f"group {status.group}: {status.state}, {len(status.members)} members, "
        f"lag {status.lag}, last commit {since}"
    ]
    for member in status.members:
        static = f" ({member.instance_id})" if member.instance_id else ""
        assigned = ", ".join(member.assignment) or "nothing assigned"
        lines.append(f"  member {member.client_id}{static} @ {member.host}: {assigned}")
    rows = [("partition", "committed", "end", "lag", "last commit")]
    for p in status.partitions:
        rows.append(
            (
                f"{p.topic}[{p.partition}]",
                "-" if p.committed is None else str(p.committed),
                str(p.end),
                str(p.lag),
                "-" if p.last_commit is None else f"{_duration(now - p.last_commit)} ago",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    for topic in status.missing_topics:
        lines.append(f"  topic {topic} does not exist")
    dlq = (
        "does not exist" if status.dlq_records is None else f"{status.dlq_records} records"
    )
    lines.append(f"dead-letter topic {status.dlq_topic}: {dlq}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
