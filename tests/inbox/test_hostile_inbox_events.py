"""An event an inbox cannot hold is refused before any SQL runs, and the consumer goes on.

Row 2 of issue #18: an event whose ``event_id`` or ``event_type`` is longer than the inbox's
columns, or whose ``outbox_id`` is past BIGINT, made the inbox ``INSERT`` fail; the engine
took that for a database outage and handled nothing after it. Here such events are written
to the route's stream with a plain ``XADD``, ahead of genuine events published and relayed
by a producer engine; the consumer's threads must handle every genuine event, on
PostgreSQL and MariaDB.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.inbox import InboxStatus, SqlInbox
from outboxkit.messages import PublishRequest, Status
from outboxkit.routing import Routing, ServiceCatalog
from tests.support.engine import fast_config, wait_for
from tests.support.hostile import envelope, xadd

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.mysql]

GENUINE = 20
TOO_LONG = "x" * 65

UNFIT = {
    "event_id-65-characters": {"outbox_id": 1, "event_id": TOO_LONG},
    "event_type-65-characters": {"outbox_id": 1, "event_id": "e-type", "event_type": TOO_LONG},
    "outbox_id-2**63": {"outbox_id": 2**63, "event_id": "e-big"},
}


@pytest.mark.parametrize("database", ["postgres", "mysql"])
@pytest.mark.parametrize("fields", UNFIT.values(), ids=UNFIT.keys())
def test_an_event_the_inbox_cannot_hold_does_not_stop_the_inbox_consumer(
    request: pytest.FixtureRequest,
    database: str,
    fields: dict[str, object],
    redis_url: str,
    unique: str,
) -> None:
    # Given: a producer and a consumer of an inbox route, on one database server
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    catalog = ServiceCatalog(namespace=f"hi-{unique}")
    catalog.configure("billing", table=f"hi_{unique}_billing_outbox", inbox=True)
    routing = Routing(catalog)
    route = routing.register("invoice.requested", "billing")
    inbox = SqlInbox(db, table=f"hi_{unique}_inbox")
    producer = Engine(
        SqlRepository(db),
        RedisStreamsBroker.from_url(redis_url),
        routing,
        config=fast_config(relay_services=("billing",), consumer_services=()),
    )
    consumer = Engine(
        SqlRepository(db),
        RedisStreamsBroker.from_url(redis_url),
        routing,
        config=fast_config(relay_services=()),
        inboxes={"billing": inbox},
    )
    handled: list[str] = []
    consumer.register_handler(
        "invoice.requested", lambda event, _conn: handled.append(event.event_id)
    )
    producer.create_schema()
    inbox.create_schema()
    try:
        # When: an event the inbox cannot hold comes first on the stream, then genuine ones
        unfit = {"event_type": "invoice.requested", "service_name": "billing", **fields}
        xadd(redis_url, route.topic, [envelope(**unfit)])
        published = [
            producer.publish(PublishRequest(event_type="invoice.requested", payload={"n": n}))
            for n in range(GENUINE)
        ]
        consumer.start()
        producer.start()
        # Then: every genuine event is handled, and its receipt makes its row consumed
        wait_for(
            lambda: inbox.count_by_status(route.group)[InboxStatus.CONSUMED] == GENUINE,
            timeout=20,
            what="every genuine event consumed into the inbox",
        )
        wait_for(
            lambda: producer.repository.count_by_status(route)[Status.CONSUMED] == GENUINE,
            timeout=20,
            what="every producer row consumed through its receipt",
        )
        assert sorted(handled) == sorted(published)
        assert inbox.count_by_status(route.group)[InboxStatus.FAILED] == 0
    finally:
        consumer.stop(timeout=10)
        producer.stop(timeout=10)
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {route.table}"))
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {inbox.table_name}"))
