"""Bad messages never stop a consumer and never touch a row they do not belong to.

Hypothesis hands arbitrary bytes, truncated and oversized envelopes, and well-formed
envelopes with arbitrary field values to ``Consumer.handle`` on the real PostgreSQL and
MariaDB. The outbox table holds a few genuine pending rows; none of them may change,
and the handler may never run, because no fuzzed message is a genuine delivery.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import attrs
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outboxkit.backends import SqlRepository
from outboxkit.broker import Delivery
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.outbox_ledger import OutboxLedger
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.messages import PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route
from tests.support.engine import unique_routing

pytestmark = pytest.mark.fuzz

EVENT_TYPE = "fuzz.consumed"
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@attrs.define
class Rig:
    consumer: Consumer
    repository: SqlRepository
    route: Route
    row_ids: list[int]
    calls: list[str]

    def snapshot(self) -> list[tuple[object, ...]]:
        table = self.repository.table(self.route)
        query = sa.select(
            table.c.id, table.c.status, table.c.retry_count, table.c.last_error
        ).order_by(table.c.id)
        with self.repository.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query)]


@pytest.fixture(params=["postgres", "mysql"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    db: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    routing = unique_routing(uuid.uuid4().hex[:10], "fuzzc")
    routing.register(EVENT_TYPE, "fuzzc")
    repository = SqlRepository(db)
    route = routing.route_of(EVENT_TYPE)
    repository.create_schema([route])
    Publisher(repository, routing).publish_many(
        [PublishRequest(event_type=EVENT_TYPE, payload={"n": n}) for n in range(3)]
    )
    with db.connect() as conn:
        ids = [int(i) for i in conn.execute(sa.text(f"SELECT id FROM {route.table}")).scalars()]
    calls: list[str] = []
    registry = HandlerRegistry(routing)
    registry.register(EVENT_TYPE, lambda event, _conn: calls.append(event.event_id))
    yield Rig(Consumer(OutboxLedger(repository, route), registry), repository, route, ids, calls)
    with db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {route.table}"))


def _deliver(rig: Rig, value: bytes) -> None:
    before = rig.snapshot()
    delivery = Delivery(topic=rig.route.topic, key="k", value=value, headers={}, receipt=None)
    rig.consumer.handle(delivery)  # must not raise
    assert rig.snapshot() == before, f"a bad message changed a genuine row: {value[:200]!r}"
    assert rig.calls == [], "the handler ran for a message that is no genuine delivery"


GENUINE_LIKE = json.dumps(
    {"envelope_version": 1, "outbox_id": 10**12, "event_id": "x", "event_type": EVENT_TYPE}
).encode()


@FUZZ
@given(
    value=st.one_of(
        st.binary(max_size=2000),
        st.integers(1, len(GENUINE_LIKE) - 1).map(lambda n: GENUINE_LIKE[:n]),
        st.integers(1_000_000, 1_200_000).map(lambda n: b'{"payload":"' + b"q" * n + b'"}'),
    )
)
def test_arbitrary_truncated_or_oversized_bytes_never_raise_or_touch_a_row(
    rig: Rig, value: bytes
) -> None:
    _deliver(rig, value)


json_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), st.just([])
)


@FUZZ
@given(data=st.data())
def test_envelopes_naming_a_real_row_with_a_foreign_event_id_never_touch_it(
    rig: Rig, data: st.DataObject
) -> None:
    envelope = {
        "outbox_id": data.draw(st.sampled_from(rig.row_ids)),
        "event_id": f"foreign-{data.draw(st.uuids())}",
        "event_type": data.draw(st.one_of(st.just(EVENT_TYPE), st.text(max_size=20))),
        "payload": data.draw(json_values),
        "envelope_version": data.draw(st.one_of(st.just(1), json_values)),
        "attempt": data.draw(json_values),
    }
    _deliver(rig, json.dumps(envelope).encode())
