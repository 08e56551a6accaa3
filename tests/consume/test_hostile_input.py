"""No message stops the consumer of a service whose rows live in its own database.

Row 3 of issue #18: a message whose ``outbox_id`` is past BIGINT reached the row lock on
PostgreSQL (``NumericValueOutOfRange``), which the engine took for an outage: the consumer
paused for good. Here it is written to the route's stream with a plain ``XADD``, ahead of
genuine events, and the engine's threads must handle every genuine one, on PostgreSQL and
MariaDB.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.messages import PublishRequest, Status
from tests.support.engine import fast_config, orders_routing, wait_for
from tests.support.hostile import envelope, xadd

pytestmark = pytest.mark.redis

GENUINE = 10

OUT_OF_RANGE = {
    "outbox_id-2**63": 2**63,
    "outbox_id-2**64": 2**64,
    "outbox_id-10**30": 10**30,
}


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("database", ["postgres", "mysql"])
@pytest.mark.parametrize("outbox_id", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_an_outbox_id_past_bigint_does_not_stop_the_consumer(
    request: pytest.FixtureRequest, database: str, outbox_id: int, redis_url: str, unique: str
) -> None:
    # Given: an engine relaying and consuming one service on its own database
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    routing = orders_routing(unique)
    route = routing.route_of("order.placed")
    engine = Engine(
        SqlRepository(db), RedisStreamsBroker.from_url(redis_url), routing, config=fast_config()
    )
    handled: list[str] = []
    engine.register_handler("order.placed", lambda event, _conn: handled.append(event.event_id))
    engine.create_schema()
    try:
        # When: a message naming a row id past BIGINT comes first, then genuine events
        xadd(
            redis_url,
            route.topic,
            [
                envelope(
                    outbox_id=outbox_id,
                    event_id="e-big",
                    event_type="order.placed",
                    service_name="orders",
                )
            ],
        )
        published = [
            engine.publish(PublishRequest(event_type="order.placed", payload={"n": n}))
            for n in range(GENUINE)
        ]
        engine.start()
        # Then: every genuine event is handled and its row consumed
        wait_for(
            lambda: engine.repository.count_by_status(route)[Status.CONSUMED] == GENUINE,
            timeout=20,
            what="every genuine event consumed",
        )
    finally:
        engine.stop(timeout=10)
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {route.table}"))
    assert sorted(handled) == sorted(published)
