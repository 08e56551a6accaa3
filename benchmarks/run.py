"""Throughput of outboxkit against the raw limit measured in the same run.

    .venv/bin/python -m benchmarks.run [--rows 5000] [--only postgres,mysql,kafka,redis]

The machines this runs on are shared and noisy, so absolute figures mean little; each
outboxkit figure is reported as a ratio to the raw building block measured right before it
(raw executemany INSERT for publishing, raw producer / pipelined XADD for relaying), with
the same row shape (~300 B payload) and batch sizes. Needs the services the tests need;
starts its own Tansu for Kafka unless ``OUTBOXKIT_TEST_KAFKA_BOOTSTRAP`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.messages import PublishRequest, Status
from outboxkit.outbox import Publisher
from outboxkit.relay import Relay, RelayConfig
from outboxkit.routing import Routing, ServiceCatalog
from outboxkit.testing import services

PAYLOAD = {"order_id": 0, "customer": "c" * 40, "items": [{"sku": "x" * 20, "qty": 2}] * 4}
BATCH = 100


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(fn: Callable[[], int]) -> float:
    started = time.perf_counter()
    count = fn()
    return _rate(count, time.perf_counter() - started)


@contextlib.contextmanager
def _scratch(db: sa.Engine) -> Iterator[tuple[Routing, SqlRepository, sa.Table]]:
    run = uuid.uuid4().hex[:8]
    catalog = ServiceCatalog(namespace=f"bench-{run}")
    catalog.configure("bench", table=f"bench_{run}_outbox")
    routing = Routing(catalog)
    routing.register("bench.event", "bench")
    repository = SqlRepository(db)
    route = routing.route_of("bench.event")
    repository.create_schema([route])
    raw = sa.Table(
        f"bench_{run}_raw",
        sa.MetaData(),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("biz_type", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("message_key", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("next_retry_at", sa.DateTime),
    )
    raw.create(db)
    try:
        yield routing, repository, raw
    finally:
        raw.drop(db)
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {route.table}"))


def bench_publish(name: str, db: sa.Engine, rows: int) -> list[tuple[str, float, float]]:
    """Raw executemany INSERT vs publish_many, 100 rows per transaction; 1 row per commit."""
    results = []
    with _scratch(db) as (routing, repository, raw):
        publisher = Publisher(repository, routing)
        body = json.dumps(PAYLOAD)

        def raw_batched() -> int:
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            for start in range(0, rows, BATCH):
                values = [
                    {
                        "biz_type": "bench.event",
                        "topic": "t",
                        "message_key": f"k{i % 50}",
                        "payload": body,
                        "status": "pending",
                        "next_retry_at": now,
                    }
                    for i in range(start, min(rows, start + BATCH))
                ]
                with db.begin() as conn:
                    conn.execute(raw.insert(), values)
            return rows

        def outbox_batched() -> int:
            for start in range(0, rows, BATCH):
                requests = [
                    PublishRequest(
                        event_type="bench.event", message_key=f"k{i % 50}", payload=PAYLOAD
                    )
                    for i in range(start, min(rows, start + BATCH))
                ]
                with db.begin() as conn:
                    publisher.publish_many(requests, connection=conn)
            return rows

        single = max(rows // 5, 200)

        def raw_single() -> int:
            for i in range(single):
                with db.begin() as conn:
                    conn.execute(
                        raw.insert(),
                        {
                            "biz_type": "bench.event",
                            "topic": "t",
                            "message_key": f"k{i}",
                            "payload": body,
                            "status": "pending",
                            "next_retry_at": None,
                        },
                    )
            return single

        def outbox_single() -> int:
            for i in range(single):
                with db.begin() as conn:
                    publisher.publish(
                        PublishRequest(
                            event_type="bench.event", message_key=f"k{i}", payload=PAYLOAD
                        ),
                        connection=conn,
                    )
            return single

        raw_rate = _timed(raw_batched)
        ours = _timed(outbox_batched)
        results.append((f"{name}: publish, {BATCH} rows/tx", ours, raw_rate))
        raw_rate = _timed(raw_single)
        ours = _timed(outbox_single)
        results.append((f"{name}: publish, 1 row/tx", ours, raw_rate))
    return results


def bench_relay(
    name: str,
    db: sa.Engine,
    broker: Broker,
    raw_send: Callable[[int, str], int],
    rows: int,
) -> tuple[str, float, float]:
    """Raw producer vs relay draining ``rows`` due rows to the same broker."""
    with _scratch(db) as (routing, repository, _raw):
        route = routing.route_of("bench.event")
        publisher = Publisher(repository, routing)
        for start in range(0, rows, 500):
            with db.begin() as conn:
                publisher.publish_many(
                    [
                        PublishRequest(
                            event_type="bench.event", message_key=f"k{i % 50}", payload=PAYLOAD
                        )
                        for i in range(start, min(rows, start + 500))
                    ],
                    connection=conn,
                )
        broker.ensure_topic(route.topic)
        raw_rate = _timed(lambda: raw_send(rows, f"{route.topic}-raw"))
        relay = Relay(repository, broker, route, config=RelayConfig(batch_size=500))

        def drain() -> int:
            done = 0
            while done < rows:
                step = relay.run_once()
                if step.claimed == 0:
                    break
                done += step.published
            return done

        ours = _timed(drain)
        counts = repository.count_by_status(route)
        assert counts[Status.PUBLISHED] == rows, counts
    return (f"{name}: relay", ours, raw_rate)


def _kafka(rows_value: bytes) -> tuple[Broker, Callable[[int, str], int], Callable[[], None]]:
    from kafka import KafkaProducer

    from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig
    from outboxkit.testing.tansu import TansuServer

    server = None
    bootstrap = services.external_kafka_bootstrap()
    if bootstrap is None:
        server = TansuServer()
        server.start()
        bootstrap = server.bootstrap
    broker = KafkaBroker(KafkaConfig.from_bootstrap(bootstrap))

    def raw_send(count: int, topic: str) -> int:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        for i in range(count):
            producer.send(topic, key=f"k{i % 50}".encode(), value=rows_value)
        producer.flush()
        producer.close()
        return count

    def stop() -> None:
        broker.close()
        if server is not None:
            server.stop()

    return broker, raw_send, stop


def _redis(rows_value: bytes) -> tuple[Broker, Callable[[int, str], int], Callable[[], None]]:
    import redis

    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    url = services.redis_url()
    broker = RedisStreamsBroker.from_url(url)
    client = redis.Redis.from_url(url)
    streams: list[str] = []

    def raw_send(count: int, stream: str) -> int:
        streams.append(stream)
        streams.append(stream.removesuffix("-raw"))  # the relay's stream of the same run
        for start in range(0, count, 500):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(count, start + 500)):
                pipe.xadd(stream, {"key": f"k{i % 50}", "value": rows_value})
            pipe.execute()
        return count

    def stop() -> None:
        if streams:
            client.delete(*streams)
        client.close()
        broker.close()

    return broker, raw_send, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--only", default="postgres,mysql,kafka,redis")
    args = parser.parse_args()
    only = set(args.only.split(","))
    databases = {
        name: sa.create_engine(url)
        for name, url in (("postgres", services.postgres_url()), ("mysql", services.mysql_url()))
        if name in only
    }
    value = json.dumps({"payload": PAYLOAD, "outbox_id": 1, "event_type": "bench.event"}).encode()
    results: list[tuple[str, float, float]] = []
    for name, db in databases.items():
        results.extend(bench_publish(name, db, args.rows))
    for kind, factory in (("kafka", _kafka), ("redis", _redis)):
        if kind not in only:
            continue
        broker, raw_send, stop = factory(value)
        try:
            for name, db in databases.items():
                results.append(bench_relay(f"{name} -> {kind}", db, broker, raw_send, args.rows))
        finally:
            stop()
    print(f"{'what':<36} {'outboxkit/s':>12} {'raw/s':>10} {'ratio':>6}")
    for what, ours, raw in results:
        print(f"{what:<36} {ours:>12,.0f} {raw:>10,.0f} {ours / raw:>6.2f}")


if __name__ == "__main__":
    main()
