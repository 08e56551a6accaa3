"""The relay's splice (``outboxkit.wire.row_encoding``) against the general path it replaces.

For every shell ``encode_shell`` writes, the spliced message must be byte-for-byte the one
``envelope_from_row`` + ``encode_envelope`` build; every other shell must take the general
path. The last tests run the relay on real PostgreSQL and Redis with rows the splice must
refuse, including ones that cannot be published at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from outboxkit.backends import SqlRepository
from outboxkit.broker import BrokerMessage
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.errors import DecodeError
from outboxkit.messages import OutboxMessage, PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay, RelayConfig
from outboxkit.routing import Routing
from outboxkit.wire import row_encoding
from outboxkit.wire.envelope import (
    broker_headers,
    decode_envelope,
    encode_envelope,
    encode_shell,
    envelope_from_row,
)
from outboxkit.wire.row_encoding import encode_row
from tests.support.engine import orders_routing, outbox_row, scratch_repository

PUBLISHED = "2026-11-25T10:00:00.123456Z"
OCCURRED = datetime(2026, 11, 25, 9, 59, 59, 654321, tzinfo=timezone.utc)


def _row(payload: str, **extra: Any) -> OutboxMessage:
    fields: dict[str, Any] = {
        "event_id": "ev-7",
        "event_type": "order.placed",
        "service_name": "orders",
        "topic": "orders.outbox",
        "message_key": "order-1",
    }
    return outbox_row(payload, **{**fields, **extra})


def general_path(row: OutboxMessage) -> BrokerMessage:
    """What the relay published before the splice existed."""
    envelope = envelope_from_row(row, published_at=PUBLISHED)
    return BrokerMessage(
        topic=row.topic,
        key=row.message_key,
        value=encode_envelope(envelope),
        headers=broker_headers(envelope),
    )


# Text with the characters that need escapes in JSON, non-ASCII and astral-plane ones.
texts = st.text(alphabet=st.sampled_from('ab \t\n"\\/é😀\x00\x1f'), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
requests = st.builds(
    PublishRequest,
    event_type=st.sampled_from(["order.placed", "订单.创建", "a/b"]),
    payload=json_values,
    message_key=st.sampled_from(["", "order-1", "客户"]),
    event_id=st.sampled_from(["ev-1", "e\u00e9", "x" * 40]),
    headers=st.dictionaries(
        st.sampled_from(["traceparent", "tracestate", "tenant", "t\u00e9"]), texts, max_size=3
    ),
    correlation_id=st.sampled_from(["", "flow-1", "fl\u00f6w"]),
    causation_id=st.sampled_from(["", "cause-1"]),
)
rows = st.fixed_dictionaries(
    {
        "id": st.integers(1, 2**62),
        "event_id": st.sampled_from([None, "", "row-ev", "r\u00e9\n"]),
        "service_name": st.sampled_from(["", "orders", 'sv"c']),
        "message_key": st.sampled_from(["", "k", "k\u00e9y"]),
        "retry_count": st.integers(0, 30),
    }
)


@settings(max_examples=400, deadline=None)
@given(request=requests, row_fields=rows)
def test_a_spliced_message_is_byte_for_byte_the_general_paths(
    request: PublishRequest, row_fields: dict[str, Any]
) -> None:
    row = _row(encode_shell(request, occurred_at=OCCURRED), **row_fields)
    assert encode_row(row, published_at=PUBLISHED) == general_path(row)


@pytest.mark.parametrize(
    "request_",
    [
        PublishRequest(event_type="order.placed", payload={"n": 1, "name": "Zoë 😀"}),
        PublishRequest(event_type="order.placed", payload=None, message_key="k"),
        PublishRequest(
            event_type="order.placed",
            payload=[1, 2.5, True],
            headers={"traceparent": "00-abc-def-01", "tenant": "t1"},
            correlation_id="flow-1",
            causation_id="ev-0",
        ),
    ],
    ids=["plain", "null-payload", "headers-and-flow"],
)
def test_shells_this_library_writes_are_spliced(request_: PublishRequest) -> None:
    """Without this, a splice that always declined would pass the property test."""
    row = _row(encode_shell(request_, occurred_at=OCCURRED))
    spliced = row_encoding._splice(row, PUBLISHED)
    assert spliced is not None and spliced == general_path(row)


@pytest.mark.parametrize(
    "column",
    [
        # Written by the Go system: no occurred_at, so never spliced.
        '{"event_id":"g-1","event_type":"order.placed","event_version":"v2",'
        '"aggregate_id":"a-1","payload":{"n":0.000001}}',
        # Go's HTML-safe escapes inside the payload: re-encoded, not copied.
        '{"event_id":"g-1","event_type":"order.placed","event_version":"v1",'
        '"aggregate_id":"a-1","payload":{"t":"\\u003cb\\u003e"},"occurred_at":"2026-01-01T00:00:00Z"}',
        # Padded strings are trimmed by the general path.
        '{"event_id":" g-1 ","event_type":" order.placed ","event_version":"",'
        '"aggregate_id":"","payload":1,"occurred_at":"2026-01-01T00:00:00Z"}',
        # Whitespace between tokens, a key order of its own.
        '{"event_type": "order.placed", "payload": {"a": [1, 2]}, "occurred_at": "x"}',
        # A later duplicate payload key wins in the general path.
        '{"event_id":"g-1","event_type":"order.placed","event_version":"v1",'
        '"aggregate_id":"","payload":1,"occurred_at":"x","payload":2}',
        # Empty headers and empty flow ids, which encode_shell never writes.
        '{"event_id":"g-1","event_type":"order.placed","event_version":"v1",'
        '"aggregate_id":"","payload":1,"occurred_at":"x","headers":{},"correlation_id":""}',
        # A header value that is not a string.
        '{"event_id":"g-1","event_type":"order.placed","event_version":"v1",'
        '"aggregate_id":"","payload":1,"occurred_at":"x","headers":{"n":5}}',
    ],
    ids=["go", "escapes", "padded", "spaced", "duplicate-payload", "empty-extras", "odd-header"],
)
def test_other_shells_take_the_general_path(column: str) -> None:
    row = _row(column)
    assert row_encoding._splice(row, PUBLISHED) is None
    assert encode_row(row, published_at=PUBLISHED) == general_path(row)


@pytest.mark.parametrize(
    "payload",
    [
        '{"a": [1, 2]}',
        '{"a":1,"a":2}',
        "1E2",
        "-0",
        "1.50",
        '{"b":true, "c":null}',
        "[1e-400, 0.0, 0e5, 1E-400]",
    ],
    ids=["spacing", "repeated-key", "exponent", "minus-zero", "trailing-zero", "mixed", "tiny"],
)
def test_an_imitation_of_our_head_publishes_the_same_values(payload: str) -> None:
    """Hand-made text behind our exact head may be copied as written: it must decode to
    the values the general path publishes."""
    column = (
        '{"event_id":"h-1","event_type":"order.placed","event_version":"v1",'
        f'"aggregate_id":"","payload":{payload},"occurred_at":"2026-01-01T00:00:00Z"}}'
    )
    row = _row(column)
    spliced = decode_envelope(encode_row(row, published_at=PUBLISHED).value)
    general = decode_envelope(general_path(row).value)
    assert spliced == general


@pytest.mark.parametrize("depth", [980, 995, 1010])
def test_deep_nesting_is_never_spliced_so_both_paths_agree(depth: int) -> None:
    """Whether Python's parser gives up near 990 levels depends on the stack it starts
    from: the splice must not accept what the general path, starting deeper, refuses."""
    column = (
        '{"event_id":"d","event_type":"order.placed","event_version":"v1","aggregate_id":"",'
        f'"payload":{"[" * depth + "]" * depth},"occurred_at":"2026-01-01T00:00:00Z"}}'
    )
    row = _row(column)
    assert row_encoding._splice(row, PUBLISHED) is None
    try:
        general: BrokerMessage | DecodeError = general_path(row)
    except DecodeError as exc:
        general = exc
    try:
        ours: BrokerMessage | DecodeError = encode_row(row, published_at=PUBLISHED)
    except DecodeError as exc:
        ours = exc
    assert isinstance(ours, DecodeError) == isinstance(general, DecodeError)


def test_a_go_shell_publishes_its_payload_as_json_values() -> None:
    row = _row(
        '{"event_id":"g-1","event_type":"order.placed","payload":{"n":0.000001}}', event_id=None
    )
    envelope = decode_envelope(encode_row(row, published_at=PUBLISHED).value)
    assert (envelope.event_id, envelope.payload) == ("g-1", {"n": 0.000001})


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        ('{"event_type":"order.placed","payload":', "failed to parse outbox event shell"),
        ('{"event_type":"  ","payload":{}}', "event type is empty"),
        (
            '{"event_id":"e","event_type":"order.placed","event_version":"v1","aggregate_id":"",'
            '"payload":{"x":NaN},"occurred_at":"2026-01-01T00:00:00Z"}',
            "failed to serialize outbox envelope",
        ),
        (
            '{"event_id":"e","event_type":"order.placed","event_version":"v1","aggregate_id":"",'
            '"payload":{"x":1e400},"occurred_at":"2026-01-01T00:00:00Z"}',
            "failed to serialize outbox envelope",
        ),
        (
            '{"event_id":"e","event_type":"order.placed","event_version":"v1","aggregate_id":"",'
            '"payload":1,"occurred_at":"2026-01-01T00:00:00Z","headers":{"x":"\\ud800"}}',
            "failed to serialize outbox envelope",
        ),
        (
            '{"event_id":"e","event_type":"order.placed","event_version":"v1","aggregate_id":"",'
            '"payload":1,"occurred_at":"2026-01-01T00:00:00Z","correlation_id":"\\udfff"}',
            "failed to serialize outbox envelope",
        ),
        (
            '{"event_id":"e","event_type":"order.placed","event_version":"v1","aggregate_id":"",'
            f'"payload":{"[" * 5000 + "]" * 5000},"occurred_at":"2026-01-01T00:00:00Z"}}',
            "failed to parse outbox event shell",
        ),
    ],
    ids=[
        "truncated",
        "no-type",
        "nan",
        "infinite",
        "surrogate-header",
        "surrogate-flow-id",
        "too-deep",
    ],
)
def test_a_row_that_cannot_be_published_raises_decode_error(column: str, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        encode_row(_row(column, id=41), published_at=PUBLISHED)
    assert reason in caught.value.reason and caught.value.outbox_id == 41


# --------------------------------------------------------------------------- the relay


@pytest.fixture
def routing(unique: str) -> Routing:
    return orders_routing(unique)


@pytest.fixture
def repository(postgres_engine: sa.Engine, routing: Routing) -> Iterator[SqlRepository]:
    with scratch_repository(postgres_engine, routing) as repository:
        yield repository


@pytest.mark.postgres
@pytest.mark.redis
def test_the_relay_publishes_spliced_and_general_rows_and_buries_the_unpublishable(
    repository: SqlRepository, routing: Routing, redis_url: str
) -> None:
    """One batch mixing our shells, a Go shell, a NaN payload and a truncated shell."""
    route = routing.route_of("order.placed")
    requests = [
        PublishRequest(event_type="order.placed", message_key="k", payload={"n": n})
        for n in range(4)
    ]
    with repository.engine.begin() as conn:
        Publisher(repository, routing).publish_many(requests, connection=conn)
    go_id, nan_id, broken_id = (request.event_id for request in requests[1:])
    replaced = {
        go_id: '{"event_type":"order.placed","payload":{"n":1}}',
        nan_id: '{"event_id":"x","event_type":"order.placed","event_version":"v1",'
        '"aggregate_id":"","payload":NaN,"occurred_at":"2026-01-01T00:00:00Z"}',
        broken_id: '{"event_type":"order.placed","payload":{',
    }
    table = sa.table(route.table, sa.column("event_id"), sa.column("payload"))
    with repository.engine.begin() as conn:
        for event_id, column in replaced.items():
            conn.execute(table.update().where(table.c.event_id == event_id).values(payload=column))
    broker = RedisStreamsBroker.from_url(redis_url)
    relay = Relay(repository, broker, route, config=RelayConfig(batch_size=10))
    try:
        step = relay.run_once()
    finally:
        relay.close()
        broker.close()

    assert (step.claimed, step.published, step.dead) == (4, 2, 2)
    client = redis.Redis.from_url(redis_url)
    entries = [fields for _, fields in client.xrange(route.topic)]
    client.delete(route.topic)
    envelopes = [decode_envelope(fields[b"value"]) for fields in entries]
    assert [(e.event_id, e.payload) for e in envelopes] == [
        (requests[0].event_id, {"n": 0}),
        (go_id, {"n": 1}),
    ]
    nan_row = repository.get_by_event_id(route, nan_id)
    broken_row = repository.get_by_event_id(route, broken_id)
    assert nan_row is not None and broken_row is not None
    assert nan_row.status is Status.DEAD and broken_row.status is Status.DEAD
    assert (nan_row.last_error or "").startswith("failed to serialize outbox envelope")
    assert (broken_row.last_error or "").startswith("failed to parse outbox event shell: ")
    assert "failed to parse outbox event shell: failed" not in (broken_row.last_error or "")
    assert json.loads(entries[0][b"value"])["published_at"].endswith("Z")
