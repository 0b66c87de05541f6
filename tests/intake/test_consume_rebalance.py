"""A revoke's drain against a real broker: the event loop keeps running while it waits.

The drain (on the consume thread, inside librdkafka's rebalance callback) waits for work that
only the event loop can finish. Calls on the consumer wait while a fetch runs, the callback
included (`position` and `store_offsets` waited out the whole drain), so a loop that stored a
finished record's offset, or asked for lag, then would wait for the drain, and the drain for
the loop: the revoke ran out its bound with work in flight, and the partitions' new owner read
it again. Here the sweep asks for lag and the drained work stores its offsets right in the
middle of a drain; the revoke's commit must hold those offsets.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.completion.dedup import Deduplicator
from stream.completion.ledger import Ledger
from stream.intake.consume import KafkaConsumer
from stream.intake.source import Partitions
from stream.state import open_store
from tests.support import wait_until
from tests.support.inprocess import offline_settings

DRAIN_BOUND = 30.0  # what the old code waited out, every revoke


def member(bootstrap: str, topic: str, drain: Any) -> KafkaConsumer:
    settings = offline_settings(
        kafka_bootstrap_servers=bootstrap, kafka_topics=topic, kafka_group_id=f"group-{topic}"
    )
    ledger = Ledger(Deduplicator(open_store("sqlite:///:memory:")), None, lambda *_: None)
    return KafkaConsumer(settings, ledger, drain)


async def test_the_loop_finishes_a_drained_partitions_work_and_the_commit_holds_its_offsets(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = topic_factory(partitions=4)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in range(4):  # one record each: the drained work finishes offset 0
        producer.produce(topic, b"x", partition=partition)
    producer.flush(30)
    draining = threading.Event()  # the first member's drain has begun
    asking = threading.Event()  # the sweep is asking for lag right now
    finished = threading.Event()  # the loop finished the drained work
    revoked: list[tuple[str, int]] = []
    drains: list[bool] = []

    def drain(partitions: Partitions) -> None:
        revoked.extend(partitions)
        draining.set()
        drains.append(finished.wait(DRAIN_BOUND))

    first = member(kafka_bootstrap, topic, drain)
    second: KafkaConsumer | None = None  # made once the first owns all: subscribing joins
    stop = asyncio.Event()

    async def fetching(consumer: KafkaConsumer) -> None:
        while not stop.is_set():
            await consumer.fetch(100, 0.1)

    async def sweeping() -> None:  # the housekeeping sweep's lag reading, as often as it likes
        while not stop.is_set():
            asking.set()
            await first.lag()
            await first.committed_lag()
            asking.clear()
            await asyncio.sleep(0.05)

    async def finishing() -> None:  # the drained work, done on the loop: its offsets stored
        await wait_until(
            lambda: draining.is_set() and asking.is_set(),
            timeout=DRAIN_BOUND * 2,
            what="the sweep asking mid-drain",
        )
        for topic_name, partition in revoked:
            first.store(topic_name, partition, 1)
        finished.set()

    tasks = [asyncio.create_task(fetching(first)), asyncio.create_task(sweeping())]
    try:
        await wait_until(lambda: len(first.assigned) == 4, timeout=60, what="first owns all")
        second = member(kafka_bootstrap, topic, lambda partitions: None)
        tasks.append(asyncio.create_task(fetching(second)))
        tasks.append(asyncio.create_task(finishing()))
        await wait_until(lambda: bool(drains), timeout=DRAIN_BOUND * 2, what="the drain's end")
        joined = second
        await wait_until(
            lambda: len(first.assigned) + len(joined.assigned) == 4 and bool(joined.assigned),
            timeout=60,
            what="the partitions shared",
        )
    finally:
        finished.set()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        members = [m for m in (first, second) if m is not None]
        for m in members:
            m.closing = True
        await asyncio.gather(*(m.close() for m in members))
    assert drains == [True], "the drain ran out its bound: the loop was stuck on the consumer"
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"group-{topic}"})
    try:
        committed = reader.committed([TopicPartition(t, p) for t, p in revoked], timeout=30)
    finally:
        reader.close()
    assert revoked and [tp.offset for tp in committed] == [1] * len(revoked)
