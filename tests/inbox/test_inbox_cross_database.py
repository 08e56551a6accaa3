"""Exactly once in effect across databases: events published on one database, handled on
another through the consumer's inbox, over a Redis server restarted mid-run.

Given a ``billing`` service whose producer writes PostgreSQL (or MariaDB) and whose consumer
writes MariaDB (or PostgreSQL), when events flow through a broker restart (one that keeps
its data, and one that comes back empty), handler failures (redelivered by the broker) and
duplicate publishes of events already handled, then each event takes effect exactly once
on the consumer's database and every producer row ends ``consumed``, marked by the
consumer's receipts (lost events and lost receipts are recovered by the stale-published
rescue, whose duplicates the inbox absorbs).
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
from outboxkit.publish.publisher import PublisherConfig
from outboxkit.relay.relay import RelayConfig
from outboxkit.routing import Routing, ServiceCatalog
from outboxkit.testing.redis_server import RedisServer
from tests.support.engine import count_rows, fast_config, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.mysql]

EVENTS_BEFORE_RESTART = 20
EVENTS_AFTER_RESTART = 20
TOTAL = EVENTS_BEFORE_RESTART + EVENTS_AFTER_RESTART
FAIL_ONCE_EVERY = 7
DUPLICATES = 5
#: Redis options: an append-only file keeps the data across a restart; none loses it.
KEEPS_DATA = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture(params=["restart-keeps-data", "restart-loses-data"])
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    args = KEEPS_DATA if request.param == "restart-keeps-data" else []
    with RedisServer(args=args) as server:
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
    producer = Engine(
        SqlRepository(producing),
        RedisStreamsBroker.from_url(redis_server.url),
        routing,
        config=fast_config(
            relay=RelayConfig(
                idle_interval=0.05,
                outage_backoff=0.2,
                republish_after=1.0,
                republish_interval=0.3,
            ),
            publisher=PublisherConfig(),
            relay_services=("billing",),
        ),
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
    held, release = threading.Event(), threading.Event()

    @consumer.register_handler("invoice.requested")
    def record_invoice(event: Event, connection: sa.Connection) -> None:
        connection.execute(sa.insert(invoices).values(event_id=event.event_id))
        n = event.payload["n"]
        if n == EVENTS_BEFORE_RESTART - 1:
            held.set()  # the consumer is inside a batch when the broker goes
            release.wait(30)
        with lock:
            if n % FAIL_ONCE_EVERY == 0 and event.event_id not in failed_once:
                failed_once.add(event.event_id)
                raise RuntimeError(f"invoice {n} fails once")

    producer.create_schema()
    outbox = producer.repository
    published: list[str] = []

    def publish(numbers: range) -> None:
        for n in numbers:
            with producing.begin() as conn:
                request = PublishRequest(
                    event_type="invoice.requested", message_key=f"c{n % 3}", payload={"n": n}
                )
                published.append(producer.publish(request, connection=conn))

    def status(wanted: Status) -> int:
        return outbox.count_by_status(route)[wanted]

    try:
        consumer.start()
        producer.start()
        # When: the broker restarts while the consumer holds a batch and events wait in it
        publish(range(EVENTS_BEFORE_RESTART))
        assert held.wait(30), "the consumer never reached the last event before the restart"
        wait_for(lambda: status(Status.PENDING) == 0, what="every event relayed")
        redis_server.restart()
        release.set()
        # ... more events come after the restart
        publish(range(EVENTS_BEFORE_RESTART, TOTAL))
        wait_for(lambda: status(Status.CONSUMED) == TOTAL, timeout=60, what="every row consumed")
        # ... and a few events handled already are published again (a relay whose lease
        # ran out publishes its rows a second time)
        seen = consumer.stats().duplicates
        due = outbox.now()
        with producing.begin() as conn:
            table = outbox.table(route)  # type: ignore[attr-defined]
            conn.execute(
                sa.update(table)
                .where(table.c.event_id.in_(published[:DUPLICATES]))
                .values(status="pending", next_retry_at=due)
            )
        wait_for(
            lambda: consumer.stats().duplicates >= seen + DUPLICATES, what="duplicates handled"
        )
        wait_for(lambda: status(Status.CONSUMED) == TOTAL, what="the duplicates' receipts")
    finally:
        release.set()
        producer.stop(timeout=10)
        consumer.stop(timeout=10)

    # Then: one invoice per event, on the consumer's database
    with consuming.connect() as conn:
        rows = [str(r[0]) for r in conn.execute(sa.select(invoices.c.event_id))]
    assert sorted(rows) == sorted(published)
    assert count_rows(consuming, invoices) == TOTAL
    assert len(failed_once) == TOTAL // FAIL_ONCE_EVERY + 1
    counts = inbox.count_by_status(route.group)
    assert counts == {InboxStatus.CONSUMED: TOTAL, InboxStatus.FAILED: 0, InboxStatus.DEAD: 0}
    # ... and on the producer's database every row is consumed, nothing dead
    assert outbox.count_by_status(route) == {
        Status.PENDING: 0,
        Status.PUBLISHED: 0,
        Status.CONSUMED: TOTAL,
        Status.DEAD: 0,
    }

    with consuming.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {invoices.name}"))
        conn.execute(sa.text(f"DROP TABLE {inbox.table_name}"))
    with producing.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {route.table}"))
