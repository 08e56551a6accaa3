"""Exactly once in effect across databases: events published on one database, handled on
another through the consumer's inbox, over a Redis server that is restarted mid-run.

Given a ``billing`` service whose producer writes PostgreSQL (or MariaDB) and whose consumer
writes MariaDB (or PostgreSQL), when events flow through a broker restart, handler failures
(redelivered by the broker) and duplicate publishes of events already handled, then each
event takes effect exactly once on the consumer's database, every producer row ends
``published`` and stays so (the stale-published rescue leaves inbox routes alone).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.inbox import InboxStatus, SqlInbox
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.relay import Relay, RelayConfig
from outboxkit.routing import Routing, ServiceCatalog
from outboxkit.testing.redis_server import RedisServer
from tests.engine_support import count_rows, fast_config, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.mysql]

EVENTS_BEFORE_RESTART = 20
EVENTS_AFTER_RESTART = 20
FAIL_ONCE_EVERY = 7
DUPLICATES = 5


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis that keeps its data across restart (append-only file, fsync always)."""
    with RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        yield server


@pytest.mark.parametrize(
    ("producer_db", "consumer_db"),
    [("postgres_engine", "mysql_engine"), ("mysql_engine", "postgres_engine")],
    ids=["postgres-to-mariadb", "mariadb-to-postgres"],
)
def test_handler_on_another_database_takes_effect_once_through_restart_and_redelivery(
    request: pytest.FixtureRequest,
    producer_db: str,
    consumer_db: str,
    redis_server: RedisServer,
    unique: str,
) -> None:
    # Given: routing both sides share, billing consumed through an inbox
    producing: sa.Engine = request.getfixturevalue(producer_db)
    consuming: sa.Engine = request.getfixturevalue(consumer_db)
    catalog = ServiceCatalog(namespace=f"xdb-{unique}")
    catalog.configure("billing", table=f"xdb_{unique}_billing_outbox", inbox=True)
    routing = Routing(catalog)
    route = routing.register("invoice.requested", "billing")
    invoices = sa.Table(
        f"xdb_{unique}_invoices",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),  # no unique key on purpose
    )
    invoices.create(consuming)
    inbox = SqlInbox(consuming, table=f"xdb_{unique}_inbox", max_attempts=5)
    inbox.create_schema()
    relay_config = RelayConfig(idle_interval=0.05, outage_backoff=0.2, republish_after=0.01)
    producer = Engine(
        SqlRepository(producing),
        RedisStreamsBroker.from_url(redis_server.url),
        routing,
        config=fast_config(relay=relay_config, relay_services=("billing",)),
    )
    consumer = Engine(
        SqlRepository(consuming),
        RedisStreamsBroker.from_url(redis_server.url),
        routing,
        config=fast_config(relay_services=()),
        inboxes={"billing": inbox},
    )
    failed_once: set[str] = set()
    lock = threading.Lock()

    @consumer.handler("invoice.requested")
    def record_invoice(event: Event, connection: sa.Connection) -> None:
        connection.execute(sa.insert(invoices).values(event_id=event.event_id))
        with lock:
            if event.payload["n"] % FAIL_ONCE_EVERY == 0 and event.event_id not in failed_once:
                failed_once.add(event.event_id)
                raise RuntimeError(f"invoice {event.payload['n']} fails once")

    producer.create_schema()
    outbox = producer.repository
    published: list[str] = []

    def publish(numbers: range) -> None:
        for n in numbers:
            with producing.begin() as conn:
                published.append(
                    producer.publish(
                        PublishRequest(
                            event_type="invoice.requested",
                            message_key=f"c{n % 3}",
                            payload={"n": n},
                        ),
                        connection=conn,
                    )
                )

    def applied() -> int:
        return count_rows(consuming, invoices)

    try:
        consumer.start()
        producer.start()
        # When: half the events, a broker restart, the other half
        publish(range(EVENTS_BEFORE_RESTART))
        wait_for(lambda: applied() >= EVENTS_BEFORE_RESTART // 2, what="first invoices")
        redis_server.restart()
        publish(range(EVENTS_BEFORE_RESTART, EVENTS_BEFORE_RESTART + EVENTS_AFTER_RESTART))
        total = EVENTS_BEFORE_RESTART + EVENTS_AFTER_RESTART
        wait_for(lambda: applied() >= total, timeout=60, what=f"{total} invoices")
        # ... and a few events handled already are published again (a relay whose lease
        # ran out publishes its rows a second time)
        again = published[:DUPLICATES]
        seen = consumer.stats().duplicates
        due = outbox.now()
        with producing.begin() as conn:
            table = outbox.table(route)  # type: ignore[attr-defined]
            conn.execute(
                sa.update(table)
                .where(table.c.event_id.in_(again))
                .values(status="pending", next_retry_at=due)
            )
        wait_for(
            lambda: outbox.count_by_status(route)[Status.PUBLISHED] == total,
            what="the duplicates published",
        )
        wait_for(
            lambda: consumer.stats().duplicates >= seen + DUPLICATES, what="duplicates handled"
        )
    finally:
        producer.stop(timeout=10)
        consumer.stop(timeout=10)

    # Then: one invoice per event, on the consumer's database
    with consuming.connect() as conn:
        rows = [str(r[0]) for r in conn.execute(sa.select(invoices.c.event_id))]
    assert sorted(rows) == sorted(published)
    assert len(failed_once) == total // FAIL_ONCE_EVERY + 1
    counts = inbox.count_by_status(route.group)
    assert counts == {InboxStatus.CONSUMED: total, InboxStatus.FAILED: 0, InboxStatus.DEAD: 0}
    retried = inbox.get(route.group, published[FAIL_ONCE_EVERY])
    assert retried is not None and retried.attempts == 1
    # ... and on the producer's database every row is published, final for an inbox route
    assert outbox.count_by_status(route)[Status.PUBLISHED] == total
    broker = RedisStreamsBroker.from_url(redis_server.url)
    rescue = Relay(outbox, broker, route, config=relay_config)
    assert rescue.republish_stale() == 0
    assert outbox.count_by_status(route)[Status.PUBLISHED] == total
    broker.close()

    with consuming.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {invoices.name}"))
        conn.execute(sa.text(f"DROP TABLE {inbox.table_name}"))
    with producing.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {route.table}"))
