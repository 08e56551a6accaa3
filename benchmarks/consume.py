"""Consumer throughput: ``Consumer.run_once`` with a no-op transactional handler.

The outbox table is pre-filled with N published rows and the broker with their envelopes
(by the library's own Relay), then ``run_once`` is called until all N are consumed. The raw
side does the least a consumer must: receive a batch of 500, decode each value for its
outbox id, one ``UPDATE ... SET status='consumed' WHERE id IN (...)``, one acknowledgement.
Batch size 500 on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from benchmarks import raw
from benchmarks.common import EVENT_TYPE, Rate, Scratch, interleaved, median_rate, progress, scratch
from benchmarks.env import Env
from benchmarks.figures import Figure, throughput
from benchmarks.relay import drain, kafka_broker, redis_broker
from outboxkit.broker import Broker, Subscription
from outboxkit.consume.config import ConsumerConfig
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.outbox_ledger import OutboxLedger
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.messages import Event, Status
from outboxkit.relay.relay import Relay

TARGET = 0.8
BATCH = raw.BROKER_BATCH


def noop(event: Event, connection: Any) -> None:
    """The transactional handler: does nothing, so only the library's cost is measured."""


def consumer_for(ours: Scratch) -> Consumer:
    registry = HandlerRegistry(ours.routing)
    registry.register(EVENT_TYPE, noop)
    return Consumer(
        OutboxLedger(ours.repository, ours.route), registry, config=ConsumerConfig(batch_size=BATCH)
    )


def consume_all(
    consumer: Consumer, subscription: Subscription, expected: int, *, untimed_first: bool
) -> Rate:
    """Time ``run_once`` calls until ``expected`` deliveries were handled.

    With ``untimed_first`` the first non-empty call (which waits for the Kafka group join)
    is not timed, as on the raw Kafka side.
    """
    first = 0
    for _ in range(120 if untimed_first else 0):  # bounded: 120 receives of 0.5 s
        first = consumer.run_once(subscription, timeout=0.5)
        if first:
            break
    done = 0
    started = time.perf_counter()
    for _ in range(expected + 20):  # bounded: each useful call handles at least one
        if first + done >= expected:
            break
        done += consumer.run_once(subscription, timeout=0.5)
    return Rate(count=done, seconds=time.perf_counter() - started)


def measure_consumer(
    env: Env, label: str, make_broker: Callable[[Env], Broker], count: int, kind: str
) -> Rate:
    """Pre-fill with the library's Relay on one broker, consume through a fresh one.

    The relay's broker is closed before consuming, so no producer thread of the setup
    shares the process (and the GIL) with the consumer being measured.
    """
    db = env.db(label)
    with scratch(db, "cons") as ours:
        ours.fill(count)
        if kind == "Redis":
            env.created_stream(ours.route.topic)
        else:
            env.created_topic(ours.route.topic)
        filler = make_broker(env)
        try:
            filler.ensure_topic(ours.route.topic)
            drain(Relay(ours.repository, filler, ours.route), count)
        finally:
            filler.close()
        broker = make_broker(env)
        subscription = broker.subscribe(ours.route.topic, ours.route.group, "bench-consumer")
        try:
            rate = consume_all(
                consumer_for(ours), subscription, count, untimed_first=kind == "Kafka"
            )
        finally:
            subscription.close()
            broker.close()
        consumed = ours.repository.count_by_status(ours.route)[Status.CONSUMED]
        if consumed != count:
            raise RuntimeError(f"consumer {label} + {kind}: {consumed} of {count} consumed")
        return rate


def _published_rows(ours: Scratch, count: int) -> list[bytes]:
    """Fill the raw table with published rows; return one envelope per row."""
    ours.fill(count)
    with ours.db.begin() as conn:
        conn.execute(sa.text(f"UPDATE {ours.table} SET status = 'published'"))
    return [raw.envelope(i) for i in ours.ids()]


def measure_raw_redis(env: Env, label: str, count: int) -> Rate:
    db = env.db(label)
    with scratch(db, "consraw") as bare:
        values = _published_rows(bare, count)
        stream = bare.route.topic
        env.created_stream(stream)
        raw.xadd_pipelined(env.redis_url, stream, values)
        return raw.redis_consume(db, bare.table, env.redis_url, stream, count)


def measure_raw_kafka(env: Env, label: str, count: int) -> Rate:
    db = env.db(label)
    with scratch(db, "consraw") as bare:
        values = _published_rows(bare, count)
        topic = bare.route.topic
        admin = kafka_broker(env)
        try:
            admin.ensure_topic(topic)  # same partition count as the library's topic
        finally:
            admin.close()
        env.created_topic(topic)
        raw.kafka_send_flush(env.bootstrap, topic, values)
        return raw.kafka_consume(db, bare.table, env.bootstrap, topic, count)


def consumer_redis(env: Env, label: str, count: int, rounds: int) -> Figure:
    raws, mine = interleaved(
        [
            lambda: measure_raw_redis(env, label, count),
            lambda: measure_consumer(env, label, redis_broker, count, "Redis"),
        ],
        rounds,
    )
    raw_rate, ours = median_rate(raws), median_rate(mine)
    progress(f"consumer {label} + Redis: raw {raw_rate:,.0f}/s, Consumer.run_once {ours:,.0f}/s")
    return throughput(
        f"consumer, no-op transactional handler, {label} + Redis",
        ours,
        raw_rate,
        target=TARGET,
        note="raw = XREADGROUP count 500 + one batched UPDATE + one XACK per batch",
    )


def consumer_kafka(env: Env, label: str, count: int, rounds: int) -> Figure:
    raws, mine = interleaved(
        [
            lambda: measure_raw_kafka(env, label, count),
            lambda: measure_consumer(env, label, kafka_broker, count, "Kafka"),
        ],
        rounds,
    )
    raw_rate, ours = median_rate(raws), median_rate(mine)
    progress(f"consumer {label} + Kafka: raw {raw_rate:,.0f}/s, Consumer.run_once {ours:,.0f}/s")
    return throughput(
        f"consumer, no-op transactional handler, {label} + Kafka",
        ours,
        raw_rate,
        target=TARGET,
        note="raw = kafka-python poll 500 + one batched UPDATE + one offset commit per batch; "
        "group join and first batch untimed on both sides",
    )
