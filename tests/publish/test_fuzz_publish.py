"""Arbitrary PublishRequests on the real PostgreSQL and MariaDB: each one either round-trips
exactly (the row and its event shell read back say what was asked) or raises an
``outboxkit`` error having written nothing.

Types, keys and event ids include empty, whitespace-only, over-long and 4-byte unicode text
and NUL characters; payloads are nested JSON, huge strings, big integers, NaN and
infinities, non-string dict keys and values JSON cannot carry at all.
"""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outboxkit.backends import SqlRepository
from outboxkit.errors import OutboxError
from outboxkit.messages import PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route
from outboxkit.wire.envelope import decode_shell
from outboxkit.wire.payloads import JsonPayloadCodec
from tests.support.engine import unique_routing

pytestmark = pytest.mark.fuzz

EVENT_TYPE = "fuzz.happened"
#: Bounded so the whole fuzz set stays well under a minute on a shared 2-core machine.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text that exercises the edges: astral-plane (4-byte UTF-8) characters, NUL, whitespace.
edgy_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from("a \t\né😀𝄞\U0010ffff"), max_size=140),
    st.just(""),
    st.integers(60, 200).map(lambda n: "k" * n),
)


@attrs.frozen
class Huge:
    """Stands for a ``{"blob": "z" * size}`` payload, built late to keep reprs short."""

    size: int

    def payload(self) -> dict[str, str]:
        return {"blob": "z" * self.size}


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    edgy_text,
)
non_json = st.sampled_from(
    [b"bytes", {1, 2}, object(), datetime.date(2024, 1, 1), decimal.Decimal("1.5"), 1j]
)
payloads = st.one_of(
    st.recursive(
        json_leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(edgy_text, inner, max_size=4),
        ),
        max_leaves=30,
    ),
    non_json,
    st.integers(800_000, 1_000_000).map(Huge),
)
requests = st.builds(
    PublishRequest,
    event_type=st.one_of(st.just(EVENT_TYPE), st.just(f"  {EVENT_TYPE} "), edgy_text),
    payload=payloads,
    message_key=edgy_text,
    event_version=st.one_of(st.just("v1"), edgy_text),
    aggregate_id=edgy_text,
    event_id=st.one_of(st.just(""), edgy_text, st.uuids().map(str)),
    headers=st.dictionaries(edgy_text, edgy_text, max_size=3),
)


@pytest.fixture(params=["postgres", "mysql"])
def outbox(request: pytest.FixtureRequest) -> Iterator[tuple[Publisher, SqlRepository, Route]]:
    db: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    routing = unique_routing(uuid.uuid4().hex[:10], "fuzz")
    routing.register(EVENT_TYPE, "fuzz")
    repository = SqlRepository(db)
    route = routing.route_of(EVENT_TYPE)
    repository.create_schema([route])
    yield Publisher(repository, routing), repository, route
    with db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {route.table}"))


def _rows(repository: SqlRepository, route: Route) -> int:
    with repository.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {route.table}")).scalar_one())


def _same_json(a: Any, b: Any) -> bool:
    """Equality that treats -0.0 and 0.0 alike and compares floats bit-for-bit otherwise."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@FUZZ
@given(request=requests)
def test_a_request_round_trips_exactly_or_raises_an_outbox_error_writing_nothing(
    outbox: tuple[Publisher, SqlRepository, Route], request: PublishRequest
) -> None:
    publisher, repository, route = outbox
    if isinstance(request.payload, Huge):
        request = attrs.evolve(request, payload=request.payload.payload())
    with repository.engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {route.table}"))
    try:
        event_id = publisher.publish(request)
    except OutboxError:
        assert _rows(repository, route) == 0, "a rejected request left a row behind"
        return
    except Exception as exc:  # pragma: no cover - the assertion is the report
        pytest.fail(f"publish raised {type(exc).__name__} (not an OutboxError): {exc!r}")
    row = repository.get_by_event_id(route, event_id)
    assert row is not None, f"publish returned {event_id!r} but no row has that event id"
    assert _rows(repository, route) == 1
    shell = decode_shell(row.payload, outbox_id=row.id)
    assert row.event_id == request.event_id == shell.event_id
    assert row.event_type == request.event_type == shell.event_type
    assert row.message_key == request.message_key
    assert shell.event_version == request.event_version
    assert shell.aggregate_id == request.aggregate_id
    assert dict(shell.headers) == dict(request.headers)
    # The default payload codec writes dates, decimals, bytes and sets in their JSON form.
    expected = JsonPayloadCodec().encode(request.payload)
    assert _same_json(shell.payload, expected), (
        f"payload changed on the way: {request.payload!r} -> {shell.payload!r}"
    )


@pytest.mark.parametrize("payload", [{0: None}, {True: 1}, {None: "x"}, {1.5: [1]}])
def test_a_payload_with_non_string_keys_is_rejected_rather_than_changed(
    outbox: tuple[Publisher, SqlRepository, Route], payload: dict[Any, Any]
) -> None:
    publisher, repository, route = outbox
    try:
        event_id = publisher.publish(PublishRequest(event_type=EVENT_TYPE, payload=payload))
    except OutboxError:
        assert _rows(repository, route) == 0
        return
    row = repository.get_by_event_id(route, event_id)
    assert row is not None
    assert decode_shell(row.payload).payload == payload


@pytest.mark.parametrize("field", ["event_id", "message_key", "aggregate_id"])
def test_a_nul_character_round_trips_or_is_rejected_with_an_outbox_error(
    outbox: tuple[Publisher, SqlRepository, Route], field: str, request: pytest.FixtureRequest
) -> None:
    publisher, repository, route = outbox
    sent = PublishRequest(event_type=EVENT_TYPE, payload={}, **{field: "a\x00b"})
    try:
        event_id = publisher.publish(sent)
    except OutboxError:
        assert _rows(repository, route) == 0
        return
    row = repository.get_by_event_id(route, event_id)
    assert row is not None
    shell = decode_shell(row.payload)
    assert (row.event_id, row.message_key, shell.aggregate_id) == (
        sent.event_id,
        sent.message_key,
        sent.aggregate_id,
    )
