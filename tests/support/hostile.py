"""Writing to a broker as any party with write access could: plain clients, no outboxkit.

The hostile-input tests put their messages on a stream or topic with redis-py's ``XADD`` and
kafka-python's producer, laid out as outboxkit's brokers lay out a message (a stream entry's
``key`` and ``value`` fields; a Kafka record's key and value), so nothing of outboxkit's
publishing path can tidy them up on the way. The strategies below are what such a writer
may send: anything, and things shaped like envelopes and receipts with any field wrong.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis
from hypothesis import strategies as st

from outboxkit.broker import Broker
from outboxkit.messages import OutboxMessage, PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route
from outboxkit.store import Repository


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


# --------------------------------------------------------------------------- the suite's rig


class Writer:
    """A writer of the broker: a plain redis-py client or kafka-python producer, kept open
    across a test's hypothesis examples."""

    def __init__(self, kind: str, address: str) -> None:
        self.kind = kind
        self._client: Any
        if kind == "redis":
            self._client = redis.Redis.from_url(address)
        else:
            from kafka import KafkaProducer

            self._client = KafkaProducer(bootstrap_servers=address, linger_ms=0)

    def write(self, topic: str, values: Sequence[bytes], *, key: bytes = b"k") -> None:
        """Append ``values`` to ``topic``, in order, and wait until the broker has them."""
        if self.kind == "redis":
            pipe = self._client.pipeline(transaction=False)
            for value in values:
                pipe.xadd(topic, {b"key": key, b"value": value})
            pipe.execute()
            return
        for value in values:
            self._client.send(topic, key=key, value=value)
        self._client.flush(timeout=30)

    def close(self) -> None:
        if self.kind == "redis":
            self._client.close()
        else:
            self._client.close(timeout=10)


@contextlib.contextmanager
def broker_and_writer(request: pytest.FixtureRequest, kind: str) -> Iterator[tuple[Broker, Writer]]:
    """An outboxkit broker of ``kind`` (``redis`` or ``kafka``, the real servers of the
    session) and an outsider's :class:`Writer` to the same server."""
    broker: Broker
    if kind == "redis":
        from outboxkit.brokers.redis_streams import RedisStreamsBroker

        address = request.getfixturevalue("redis_url")
        broker = RedisStreamsBroker.from_url(address)
    else:
        from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

        address = request.getfixturevalue("kafka_bootstrap")
        broker = KafkaBroker(KafkaConfig.from_bootstrap(address))
    writer = Writer(kind, address)
    try:
        yield broker, writer
    finally:
        writer.close()
        broker.close()


def open_bystanders(
    repository: Repository, route: Route, publisher: Publisher, event_type: str
) -> dict[int, str]:
    """Three open rows of ``route`` no relay will send during a test: two ``published``, as
    if sent and awaiting their consumer, and one ``pending`` under a relay's day-long lease
    (being sent). Row id -> event id, in that order."""
    ids = [
        publisher.publish(PublishRequest(event_type=event_type, payload={"n": n})) for n in range(3)
    ]
    claim = repository.claim_due(route, limit=10, lease_seconds=86_400)
    rows = {row.event_id: row.id for row in claim.messages}
    repository.mark_published(route, [rows[ids[0]], rows[ids[1]]], token=claim.token)
    return {rows[event_id]: event_id for event_id in ids}


def receive_until(
    step: Callable[[], object], done: Callable[[], bool], *, timeout: float, what: str
) -> None:
    """Run ``step`` (a consumer's or an applier's ``run_once``; an exception it raises
    fails the test) until ``done()``; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        step()


#: JSON of every type at every level, with the values that used to stop a loop among them.
EDGES = st.sampled_from(
    [2**63, 2**64, -(2**63), -1, 0, 10**30, "x" * 65, "a\x00b", "\ud800", "", " ", "x" * 5000]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | EDGES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """JSON objects with any subset of ``fields`` (each drawn from its strategy or from
    :data:`json_values`), as bytes."""
    return st.fixed_dictionaries(
        {}, optional={name: strategy | json_values for name, strategy in fields.items()}
    ).map(_dumps)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


#: What stopped a loop before issue #18, whole: deep nesting, numbers JSON cannot hold.
STOPPERS = st.sampled_from(
    [
        nested(100_000),
        b'{"outbox_id":1e400,"event_id":"e","event_type":"t","outcome":"dead","payload":{}}',
        b'{"outbox_id":NaN,"event_id":"e","event_type":"t","outcome":"dead","payload":{}}',
        b'{"outbox_id":' + b"9" * 5000 + b',"event_type":"t","payload":{}}',
        b'{"payload":"' + b"q" * 300_000 + b'"}',
    ]
)


def mutated(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """Complete objects with every field drawn from its plausible strategy in ``fields``,
    but one replaced by anything (the edge values likelier): a well-formed message with
    one bad field is what reaches furthest, into SQL."""
    complete = st.fixed_dictionaries(fields)
    bad = st.tuples(st.sampled_from(sorted(fields)), EDGES | json_values)
    return st.tuples(complete, bad).map(
        lambda drawn: _dumps({**drawn[0], drawn[1][0]: drawn[1][1]})
    )


def garbage(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[list[bytes]]:
    """One to four messages a writer of the broker could send: arbitrary bytes, arbitrary
    JSON, objects shaped like the real thing (``fields`` gives each field's plausible
    values) with any subset of fields or one field wrong, and the known loop stoppers."""
    one = st.one_of(
        st.binary(max_size=400),
        json_values.map(_dumps),
        shaped(fields),
        mutated(fields),
        mutated(fields),
        STOPPERS,
    )
    return st.lists(one, min_size=1, max_size=4)
