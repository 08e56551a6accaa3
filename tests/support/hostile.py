"""Writing to a broker as any party with write access could: plain clients, no outboxkit.

The hostile-input tests put their messages on a stream or topic with redis-py's ``XADD`` and
kafka-python's producer, laid out as outboxkit's brokers lay out a message (a stream entry's
``key`` and ``value`` fields; a Kafka record's key and value), so nothing of outboxkit's
publishing path can tidy them up on the way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from outboxkit.messages import OutboxMessage


def xadd(redis_url: str, stream: str, values: Sequence[bytes], *, key: bytes = b"k") -> None:
    """Append one entry per value to ``stream``, as a plain ``XADD``."""
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for value in values:
            pipe.xadd(stream, {b"key": key, b"value": value})
        pipe.execute()
    finally:
        client.close()


def kafka_send(bootstrap: str, topic: str, values: Sequence[bytes], *, key: bytes = b"k") -> None:
    """Produce one record per value to ``topic`` with a plain kafka-python producer."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 * 1024 * 1024)
    try:
        for value in values:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


def receipt_for(row: OutboxMessage, **changes: Any) -> bytes:
    """A receipt naming ``row`` (its id, event id and type), outcome ``consumed`` unless
    ``changes`` say otherwise."""
    fields: dict[str, Any] = {
        "event_id": row.event_id,
        "outbox_id": row.id,
        "event_type": row.event_type,
        "outcome": "consumed",
        "reason": "",
    }
    fields.update(changes)
    return json.dumps(fields).encode()


def envelope(**fields: Any) -> bytes:
    """An envelope with ``fields`` (version 1 and an empty payload unless given)."""
    value: dict[str, Any] = {"envelope_version": 1, "payload": {}}
    value.update(fields)
    return json.dumps(value).encode()


def nested(depth: int) -> bytes:
    """A JSON array nested ``depth`` deep: deeper than Python's recursion limit parses."""
    return b"[" * depth + b"]" * depth
