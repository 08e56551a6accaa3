"""Raw baselines: each building block driven directly, with the outbox's row shape.

These are the "raw, same run" column. Each function does the least work the corresponding
outboxkit path must also do (same table schema, same payload size, same batch sizes), so
the ratio shows what the library adds. Setup (filling tables and streams, joining a
consumer group) is never inside the timed part.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from benchmarks.common import EVENT_TYPE, KEYS, PAYLOAD, Rate
from benchmarks.figures import require_complete

#: The relay's default claim size (RelayConfig.batch_size) and the raw floor's.
CLAIM_LIMIT = 200
#: Entries per XADD pipeline and per XREADGROUP / Kafka poll.
BROKER_BATCH = 500
#: kafka-python producer settings of the raw baseline: the library's own defaults.
PRODUCER_SETTINGS: dict[str, Any] = {"acks": "all", "linger_ms": 5}
#: A consumer group joins Tansu in ~3 s with these (kafka-python's defaults take > 20 s).
GROUP_SETTINGS: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def shell(i: int) -> str:
    """The ``payload`` column text of row ``i`` (the library's event shell, same size)."""
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": EVENT_TYPE,
            "event_version": "1",
            "aggregate_id": "",
            "payload": PAYLOAD,
            "occurred_at": utcnow().isoformat() + "Z",
        },
        separators=(",", ":"),
    )


def row(i: int, topic: str, service: str) -> dict[str, Any]:
    """Every column the library writes on publish, for one raw row."""
    now = utcnow()
    return {
        "event_id": str(uuid.uuid4()),
        "biz_type": EVENT_TYPE,
        "service_name": service,
        "topic": topic,
        "message_key": f"k{i % KEYS}",
        "payload": shell(i),
        "status": "pending",
        "retry_count": 0,
        "max_retry": 20,
        "next_retry_at": now,
        "created_at": now,
        "updated_at": now,
    }


def envelope(outbox_id: int) -> bytes:
    """A broker message value of the library's envelope size for row ``outbox_id``."""
    return json.dumps(
        {
            "envelope_version": 1,
            "outbox_id": outbox_id,
            "event_id": str(uuid.uuid4()),
            "event_type": EVENT_TYPE,
            "event_version": "1",
            "service_name": "bench",
            "payload": PAYLOAD,
            "occurred_at": utcnow().isoformat() + "Z",
            "published_at": utcnow().isoformat() + "Z",
            "attempt": 1,
        },
        separators=(",", ":"),
    ).encode()


def _table(db: sa.Engine, name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), autoload_with=db)


# --------------------------------------------------------------------------- publishing


def insert_one_per_commit(db: sa.Engine, table: str, count: int, topic: str) -> Rate:
    """INSERT one outbox-shaped row and commit, ``count`` times."""
    target = _table(db, table)
    rows = [row(i, topic, "bench") for i in range(count)]
    started = time.perf_counter()
    for values in rows:
        with db.begin() as conn:
            conn.execute(target.insert(), values)
    return Rate(count=count, seconds=time.perf_counter() - started)


def insert_executemany(db: sa.Engine, table: str, count: int, topic: str, batch: int) -> Rate:
    """One executemany of ``batch`` rows per transaction."""
    target = _table(db, table)
    rows = [row(i, topic, "bench") for i in range(count)]
    started = time.perf_counter()
    for start in range(0, count, batch):
        with db.begin() as conn:
            conn.execute(target.insert(), rows[start : start + batch])
    return Rate(count=count, seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- claiming


def claim_floor(db: sa.Engine, table: str, expected: int, limit: int = CLAIM_LIMIT) -> Rate:
    """Drain ``expected`` due rows in two short transactions per batch (the rate counts
    the rows drained; a caller checks it reached ``expected``).

    First ``SELECT * ... ORDER BY next_retry_at, id LIMIT 200 FOR UPDATE SKIP LOCKED`` and
    one ``UPDATE ... WHERE id IN`` setting a lease; then one ``UPDATE ... IN`` marking them
    published: the least a fenced relay must do per batch.
    """
    claim = sa.text(
        f"SELECT * FROM {table} WHERE status = 'pending' AND next_retry_at <= :now "
        f"ORDER BY next_retry_at, id LIMIT {int(limit)} FOR UPDATE SKIP LOCKED"
    )
    lease = sa.text(
        f"UPDATE {table} SET lease_token = :token, next_retry_at = :until, updated_at = :now "
        "WHERE id IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True))
    mark = sa.text(
        f"UPDATE {table} SET status = 'published', published_at = :now, next_retry_at = NULL, "
        "lease_token = NULL, updated_at = :now WHERE id IN :ids AND lease_token = :token"
    ).bindparams(sa.bindparam("ids", expanding=True))
    done = 0
    started = time.perf_counter()
    for _ in range(expected // limit + 2):  # bounded: one spare round to see it empty
        now = utcnow() + timedelta(seconds=1)
        token = str(uuid.uuid4())
        with db.begin() as conn:
            ids = [int(r.id) for r in conn.execute(claim, {"now": now})]
            if not ids:
                break
            conn.execute(
                lease,
                {"token": token, "until": now + timedelta(seconds=30), "now": now, "ids": ids},
            )
        with db.begin() as conn:
            conn.execute(mark, {"now": now, "ids": ids, "token": token})
        done += len(ids)
        if done >= expected:
            break
    return Rate(count=done, seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- producing


def kafka_send_flush(bootstrap: str, topic: str, values: Sequence[bytes]) -> Rate:
    """kafka-python ``send()`` x N, then one ``flush()`` (keyed, acks=all, linger 5 ms)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_SETTINGS)
    try:
        producer.partitions_for(topic)  # metadata and connection, before the clock starts
        started = time.perf_counter()
        futures = [
            producer.send(topic, key=f"k{i % KEYS}".encode(), value=value)
            for i, value in enumerate(values)
        ]
        producer.flush(timeout=60)
        elapsed = time.perf_counter() - started
        # A send not acknowledged (failed, or still in flight after the flush) is not done.
        acknowledged = sum(1 for f in futures if f.succeeded())
        require_complete(acknowledged, len(values), "raw Kafka producer, sends acknowledged")
    finally:
        producer.close()
    return Rate(count=len(values), seconds=elapsed)


def xadd_pipelined(url: str, stream: str, values: Sequence[bytes]) -> Rate:
    """Redis ``XADD`` in pipelines of 500 (no transaction)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        started = time.perf_counter()
        for start in range(0, len(values), BROKER_BATCH):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(len(values), start + BROKER_BATCH)):
                pipe.xadd(stream, {"key": f"k{i % KEYS}", "value": values[i]})
            pipe.execute()
        return Rate(count=len(values), seconds=time.perf_counter() - started)
    finally:
        client.close()


# --------------------------------------------------------------------------- consuming


def _consumed_update(table: str) -> sa.TextClause:
    return sa.text(
        f"UPDATE {table} SET status = 'consumed', consumed_at = :now, updated_at = :now "
        "WHERE id IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True))


def redis_consume(db: sa.Engine, table: str, url: str, stream: str, expected: int) -> Rate:
    """XREADGROUP (count 500) + one ``UPDATE ... IN`` + one XACK per batch.

    The stream must hold ``expected`` envelopes of rows of ``table``; the group is created
    before timing. Each value is JSON-decoded for its ``outbox_id``, as any consumer must.
    """
    import redis

    client = redis.Redis.from_url(url)
    group = f"{stream}-rawg"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    update = _consumed_update(table)
    done = 0
    try:
        started = time.perf_counter()
        for _ in range(expected // BROKER_BATCH + 20):  # bounded
            if done >= expected:
                break
            reply = client.xreadgroup(group, "raw", {stream: ">"}, count=BROKER_BATCH, block=200)
            if not reply:
                continue
            entries = reply[0][1]
            ids = [json.loads(fields[b"value"])["outbox_id"] for _, fields in entries]
            with db.begin() as conn:
                conn.execute(update, {"now": utcnow(), "ids": ids})
            client.xack(stream, group, *[entry_id for entry_id, _ in entries])
            done += len(entries)
        rate = Rate(count=done, seconds=time.perf_counter() - started)
        require_complete(done, expected, "raw Redis consumer, entries consumed")
        return rate
    finally:
        client.xgroup_destroy(stream, group)
        client.close()


def kafka_consume(db: sa.Engine, table: str, bootstrap: str, topic: str, expected: int) -> Rate:
    """kafka-python poll (500) + one ``UPDATE ... IN`` + one offset commit per batch.

    The group join and the first batch are not timed (the join takes seconds on Tansu);
    the rate is over the remaining batches.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-rawg-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BROKER_BATCH,
        **GROUP_SETTINGS,
    )
    update = _consumed_update(table)

    def handle(batches: dict[Any, list[Any]]) -> int:
        ids = [json.loads(r.value)["outbox_id"] for records in batches.values() for r in records]
        if not ids:
            return 0
        with db.begin() as conn:
            conn.execute(update, {"now": utcnow(), "ids": ids})
        consumer.commit()
        return len(ids)

    try:
        done = 0
        deadline = time.monotonic() + 60
        while done == 0 and time.monotonic() < deadline:  # join + first batch, untimed
            done = handle(consumer.poll(timeout_ms=500, max_records=BROKER_BATCH))
        timed = 0
        started = time.perf_counter()
        for _ in range(expected // 10 + 50):  # bounded
            if done + timed >= expected:
                break
            timed += handle(consumer.poll(timeout_ms=500, max_records=BROKER_BATCH))
        rate = Rate(count=timed, seconds=time.perf_counter() - started)
        require_complete(done + timed, expected, "raw Kafka consumer, records consumed")
        return rate
    finally:
        consumer.close(autocommit=False)


def kafka_round_trip(
    bootstrap: str, topic: str, samples: int, *, fetch_max_wait_ms: int, spacing: float = 0.02
) -> list[float]:
    """Seconds from ``send()`` to ``poll()`` returning it, at one message per ``spacing``.

    A thread sends (and flushes) one message every ``spacing`` seconds carrying its send
    time while this thread polls continuously, so a fetch is usually waiting at the broker
    when a message arrives, as in a live consumer. The consumer is assigned every partition
    (no group, so no join to wait for).
    """
    import threading

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_SETTINGS)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms
    )
    times: list[float] = []
    try:
        producer.partitions_for(topic)
        partitions = consumer.partitions_for_topic(topic) or {0}
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_end()
        consumer.poll(timeout_ms=100)

        def send_all() -> None:
            for i in range(samples):
                time.sleep(spacing)
                producer.send(topic, key=f"k{i % KEYS}".encode(), value=repr(time.time()).encode())
                producer.flush()

        sender = threading.Thread(target=send_all, name="bench-rt-sender")
        sender.start()
        deadline = time.monotonic() + samples * spacing + 30
        while len(times) < samples and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=100).values():
                now = time.time()
                times.extend(now - float(r.value) for r in records)
        sender.join(timeout=30)
        return times
    finally:
        consumer.close()
        producer.close()
