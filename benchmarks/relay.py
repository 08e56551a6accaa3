"""Relay throughput: ``Relay.run_once`` draining due rows, against the raw ceiling.

The raw ceiling of a relay is the slower of its two halves, each measured in the same
run: the claim floor (two short transactions per batch of 200, on a table of the same
schema) and the raw producer (pipelined XADD of 500, or kafka-python send x N + flush).
As in the issue, the Kafka figures use the producer alone (it is by far the slower half).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

import sqlalchemy as sa

from benchmarks import raw
from benchmarks.common import (
    Rate,
    Scratch,
    interleaved,
    median_rate,
    new_run_id,
    progress,
    scratch,
)
from benchmarks.env import Env
from benchmarks.figures import Figure, failed, require_complete, throughput
from outboxkit.broker import Broker, BrokerMessage
from outboxkit.messages import Status
from outboxkit.relay.relay import Relay

TARGET = 0.9

#: Where the librdkafka broker lives (extra `confluent`); the figure is skipped without it.
CONFLUENT_MODULES = ("outboxkit.brokers.confluent_kafka", "outboxkit.brokers.confluent")
CONFLUENT_CLASS = "ConfluentKafkaBroker"


def floor_index(db: sa.Engine, label: str, table: str) -> None:
    """Give the raw floor's table the index a claim needs to read only what it returns.

    PostgreSQL already has the library's partial index on pending rows. On MariaDB the
    library's ``(status, next_retry_at, biz_type)`` makes ``ORDER BY next_retry_at, id``
    filesort, so the floor gets ``(status, next_retry_at)`` (InnoDB appends the id).
    """
    if label == "MariaDB":
        with db.begin() as conn:
            conn.execute(
                sa.text(f"CREATE INDEX bench_floor_due ON {table} (status, next_retry_at)")
            )


def measure_claim_floor(env: Env, label: str, count: int) -> Rate:
    db = env.db(label)
    with scratch(db, "floor") as bare:
        floor_index(db, label, bare.table)
        bare.fill(count)
        rate = raw.claim_floor(db, bare.table, count)
        require_complete(rate.count, count, f"raw claim floor {label}")
        return rate


def drain(relay: Relay, expected: int) -> Rate:
    """Call ``run_once`` until ``expected`` rows were published (or nothing is claimed)."""
    done = 0
    started = time.perf_counter()
    for _ in range(expected + 1):  # bounded: every useful step publishes at least one row
        step = relay.run_once()
        done += step.published
        if step.claimed == 0 or done >= expected:
            break
    return Rate(count=done, seconds=time.perf_counter() - started)


def measure_relay(env: Env, label: str, broker: Broker, count: int) -> Rate:
    db = env.db(label)
    with scratch(db, "relay") as ours:
        ours.fill(count)
        broker.ensure_topic(ours.route.topic)
        _remember(env, broker, ours)
        warm_up(broker, ours.route.topic)
        relay = Relay(ours.repository, broker, ours.route)
        try:
            rate = drain(relay, count)
        finally:
            relay.close()
        published = ours.repository.count_by_status(ours.route)[Status.PUBLISHED]
        if published != count:
            raise RuntimeError(f"relay {label}: {published} of {count} rows published")
        return rate


def warm_up(broker: Broker, topic: str) -> None:
    """Connect and fetch the topic's metadata before the clock starts, as the raw producer
    does (``partitions_for``): one throwaway message, untimed. A Kafka producer's first
    send to a new topic waits for its metadata (about 0.5 s on Tansu), a one-off cost of
    a relay's first batch, not of its throughput. Redis has nothing to warm."""
    if type(broker).__name__.startswith("Redis"):
        return
    [result] = broker.publish([BrokerMessage(topic=topic, key="warm-up", value=b"{}")])
    if result.error is not None:
        raise RuntimeError(f"warm-up send to {topic!r} failed: {result.error}")


def _remember(env: Env, broker: Broker, ours: Scratch) -> None:
    if type(broker).__name__.startswith("Redis"):
        env.created_stream(ours.route.topic)
    else:
        env.created_topic(ours.route.topic)


def redis_broker(env: Env) -> Broker:
    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    return RedisStreamsBroker.from_url(env.redis_url)


def kafka_broker(env: Env) -> Broker:
    from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

    return KafkaBroker(KafkaConfig.from_bootstrap(env.bootstrap))


def relay_to_redis(env: Env, label: str, count: int, rounds: int) -> Figure:
    values = [raw.envelope(i + 1) for i in range(count)]
    broker = redis_broker(env)
    try:

        def measure_xadd() -> Rate:
            stream = f"bench-raw-xadd-{new_run_id()}"
            env.created_stream(stream)
            return raw.xadd_pipelined(env.redis_url, stream, values)

        floors, xadds, mine = interleaved(
            [
                lambda: measure_claim_floor(env, label, count),
                measure_xadd,
                lambda: measure_relay(env, label, broker, count),
            ],
            rounds,
        )
    finally:
        broker.close()
    floor, xadd, ours = median_rate(floors), median_rate(xadds), median_rate(mine)
    progress(
        f"relay {label} -> Redis: claim floor {floor:,.0f}/s, XADD {xadd:,.0f}/s, "
        f"relay {ours:,.0f}/s"
    )
    return throughput(
        f"relay {label} -> Redis",
        ours,
        min(floor, xadd),
        target=TARGET,
        unit="rows/s",
        note=f"raw = min(claim floor {floor:,.0f}, pipelined XADD {xadd:,.0f})",
    )


def measure_producer(env: Env, count: int) -> Rate:
    from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

    topic = f"bench-raw-produce-{new_run_id()}"
    admin = KafkaBroker(KafkaConfig.from_bootstrap(env.bootstrap))
    try:
        admin.ensure_topic(topic)  # same partition count as the relay's topic
    finally:
        admin.close()
    env.created_topic(topic)
    return raw.kafka_send_flush(env.bootstrap, topic, [raw.envelope(i + 1) for i in range(count)])


def relay_to_kafka(env: Env, label: str, count: int, rounds: int) -> Figure:
    broker = kafka_broker(env)
    try:
        producers, mine = interleaved(
            [
                lambda: measure_producer(env, count),
                lambda: measure_relay(env, label, broker, count),
            ],
            rounds,
        )
    finally:
        broker.close()
    producer, ours = median_rate(producers), median_rate(mine)
    progress(
        f"relay {label} -> Kafka: kafka-python send+flush {producer:,.0f}/s, relay {ours:,.0f}/s"
    )
    return throughput(
        f"relay {label} -> Kafka",
        ours,
        producer,
        target=TARGET,
        unit="rows/s",
        note=f"raw = kafka-python send x N + flush ({producer:,.0f}/s)",
    )


def _confluent_broker_factory() -> Callable[[str], Broker] | None:
    """The librdkafka broker's constructor from a bootstrap address, if it exists yet."""
    for module_name in CONFLUENT_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, CONFLUENT_CLASS, None)
        if cls is not None:
            if hasattr(cls, "from_bootstrap"):
                return cls.from_bootstrap  # type: ignore[no-any-return]
            return cls  # type: ignore[no-any-return]
    return None


def relay_to_kafka_librdkafka(env: Env, label: str, count: int, rounds: int) -> Figure:
    """Relay through ``ConfluentKafkaBroker`` (librdkafka).

    A failed figure when none of :data:`CONFLUENT_MODULES` defines :data:`CONFLUENT_CLASS`
    (the ``confluent`` extra missing). Its raw ceiling is the claim floor: librdkafka produces to
    Tansu an order of magnitude faster than any relay can claim.
    """
    name = f"relay {label} -> Kafka (librdkafka)"
    factory = _confluent_broker_factory()
    if factory is None:
        reason = f"{CONFLUENT_CLASS} not importable from {' or '.join(CONFLUENT_MODULES)}"
        progress(f"{name}: FAILED, {reason}")
        return failed(name, "rows/s", reason, target=TARGET, goal="ratio>=")
    broker = factory(env.bootstrap)
    try:
        floors, mine = interleaved(
            [
                lambda: measure_claim_floor(env, label, count),
                lambda: measure_relay(env, label, broker, count),
            ],
            rounds,
        )
    finally:
        broker.close()
    floor, ours = median_rate(floors), median_rate(mine)
    progress(f"{name}: claim floor {floor:,.0f}/s, relay {ours:,.0f}/s")
    return throughput(
        name, ours, floor, target=TARGET, unit="rows/s", note=f"raw = claim floor {floor:,.0f}"
    )
