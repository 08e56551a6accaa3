"""Prometheus metrics, end to end: a real engine publishes and consumes, the test scrapes.

PostgreSQL and MariaDB with Redis Streams: the endpoint is scraped over HTTP and parsed,
so every counter, histogram and gauge is checked as Prometheus would see it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import attrs
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.errors import PermanentError
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.observability.observers import Observer, Observers
from outboxkit.observability.prometheus import PrometheusMetrics
from outboxkit.publish.publisher import Publisher
from outboxkit.testing.services import free_port
from tests.support import observed_app
from tests.support.engine import fast_config, unique_routing, wait_for
from tests.support.observability import (
    CONSOLE_SCRIPT,
    Samples,
    drop_outbox,
    get_status,
    scrape,
    value,
)
from tests.support.paths import ROOT

PLACED = "order.placed"
AUDITED = "order.audited"


@pytest.fixture(params=["postgres", "mysql"], ids=["postgresql", "mariadb"])
def database(request: pytest.FixtureRequest) -> sa.Engine:
    engine: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    return engine


@pytest.fixture
def observed(
    database: sa.Engine, redis_url: str, unique: str
) -> Iterator[tuple[Engine, PrometheusMetrics]]:
    """A started engine with metrics: ``order.placed`` fails once when asked, then passes;
    ``order.audited`` always fails permanently."""
    routing = unique_routing(unique, "orders")
    routing.register(PLACED, "orders")
    routing.register(AUDITED, "orders")
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    engine = Engine(
        SqlRepository(database),
        RedisStreamsBroker.from_url(redis_url),
        routing,
        config=fast_config(observer=metrics),
    )

    @engine.register_handler(PLACED)
    def place(event: Event, connection: Connection) -> None:
        if event.payload.get("flaky") and event.attempt == 1:
            raise RuntimeError("first attempt fails")

    @engine.register_handler(AUDITED)
    def audit(event: Event, connection: Connection) -> None:
        raise PermanentError("audit rejected")

    engine.create_schema()
    try:
        yield engine, metrics
    finally:
        engine.stop(timeout=10)
        drop_outbox(database, routing, redis_url, "orders")


def test_scraped_counters_histograms_and_gauges_match_what_the_engine_did(
    observed: tuple[Engine, PrometheusMetrics],
) -> None:
    # Given a running engine serving its metrics
    engine, metrics = observed
    engine.start()
    with metrics.serve(0, host="127.0.0.1", engine=engine) as server:
        url = f"{server.url}/metrics"
        # When two events pass, one fails once then passes and one is rejected for good
        engine.publish(PublishRequest(event_type=PLACED, payload={"n": 1}))
        engine.publish(PublishRequest(event_type=PLACED, payload={"n": 2}))
        engine.publish(PublishRequest(event_type=PLACED, payload={"flaky": True}))
        engine.publish(PublishRequest(event_type=AUDITED, payload={}))

        def settled() -> bool:
            samples = scrape(url)
            consumed = value(samples, "outboxkit_consumed_total", **placed)
            dead = value(samples, "outboxkit_dead_total", **audited)
            return consumed == 3 and dead == 1

        placed = {"service": "orders", "event_type": PLACED}
        audited = {"service": "orders", "event_type": AUDITED}
        wait_for(settled, timeout=30, what="3 consumed and 1 dead in the scraped metrics")
        samples = scrape(url)

        # Then the counters say what happened, by service and event type
        assert value(samples, "outboxkit_published_total", **placed) == 4  # flaky one twice
        assert value(samples, "outboxkit_published_total", **audited) == 1
        assert value(samples, "outboxkit_retried_total", **placed) == 1
        assert value(samples, "outboxkit_retried_total", **audited) is None
        assert value(samples, "outboxkit_dead_total", **placed) is None
        assert value(samples, "outboxkit_consumed_total", **audited) is None
        # and every acknowledged publish and every consume was timed, plausibly
        _assert_histogram(samples, "outboxkit_commit_to_publish_seconds", count=5)
        _assert_histogram(samples, "outboxkit_publish_to_consume_seconds", count=3)
        # and nothing is pending
        assert value(samples, "outboxkit_backlog_up") == 1
        assert value(samples, "outboxkit_pending_rows", service="orders") == 0
        assert value(samples, "outboxkit_oldest_pending_age_seconds", service="orders") == 0

        # When the engine stops and an event waits more than a second
        assert engine.stop(timeout=10)
        engine.publish(PublishRequest(event_type=PLACED, payload={"n": 3}))
        time.sleep(1.2)
        samples = scrape(url)
        # Then the gauges, read from the database at scrape time, show it
        assert value(samples, "outboxkit_pending_rows", service="orders") == 1
        age = value(samples, "outboxkit_oldest_pending_age_seconds", service="orders")
        assert age is not None and 1.0 <= age < 30


def _assert_histogram(samples: Samples, name: str, *, count: int) -> None:
    labels = {"service": "orders"}
    assert value(samples, f"{name}_count", **labels) == count
    total = value(samples, f"{name}_sum", **labels)
    assert total is not None and 0 <= total < 30 * count
    # every observation falls in a finite bucket (none is a clock-skew outlier)
    assert value(samples, f"{name}_bucket", le="600.0", **labels) == count


def test_the_backlog_gauge_reports_down_while_the_table_cannot_be_read_and_logs_it_once(
    sqlite_engine: sa.Engine, redis_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given metrics bound to an engine whose outbox table does not exist yet
    routing = unique_routing(unique, "orders")
    routing.register(PLACED, "orders")
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    engine = Engine(SqlRepository(sqlite_engine), RedisStreamsBroker.from_url(redis_url), routing)
    engine.register_handler(PLACED, lambda event, connection: None)
    engine.add_observer(metrics)
    try:
        with metrics.serve(0, host="127.0.0.1") as server, caplog.at_level("INFO"):
            # When Prometheus scrapes twice
            samples = scrape(f"{server.url}/metrics")
            scrape(f"{server.url}/metrics")
            # Then "cannot see the backlog" is not mistaken for "nothing pending"
            assert value(samples, "outboxkit_backlog_up") == 0
            assert value(samples, "outboxkit_pending_rows", service="orders") is None
            # When the table appears
            engine.create_schema()
            samples = scrape(f"{server.url}/metrics")
        # Then the gauges come back, and the outage was logged once, its end once
        assert value(samples, "outboxkit_backlog_up") == 1
        assert value(samples, "outboxkit_pending_rows", service="orders") == 0
        lines = [
            r.getMessage() for r in caplog.records if r.name == "outboxkit.observability.prometheus"
        ]
        assert len(lines) == 2, lines
        assert lines[0].startswith("metrics: cannot read the backlog")
        assert lines[1] == "metrics: the backlog can be read again"
    finally:
        engine.stop(timeout=5)


def test_a_failing_observer_is_logged_and_the_others_still_count() -> None:
    # Given a fan-out of a broken observer and a working one
    class Broken(Observer):
        def consumed(self, service: str, event_type: str, **_: object) -> None:
            raise RuntimeError("exporter bug")

    metrics = PrometheusMetrics(registry=CollectorRegistry())
    observers = Observers([Broken(), metrics])
    # When an event is reported consumed
    observers.consumed("orders", PLACED, publish_to_consume=0.01)
    # Then the working exporter counted it
    counted = metrics.registry.get_sample_value(
        "outboxkit_consumed_total", {"service": "orders", "event_type": PLACED}
    )
    assert counted == 1


def test_worker_serves_metrics_and_readiness_on_the_metrics_port(
    postgres_engine: sa.Engine, redis_url: str, unique: str
) -> None:
    # Given the real console script running a worker with --metrics-port
    port = free_port()
    env = dict(
        os.environ,
        OBSERVED_APP_DB=str(postgres_engine.url.render_as_string(hide_password=False)),
        OBSERVED_APP_BROKER=redis_url,
        OBSERVED_APP_UNIQUE=unique,
    )
    routing = observed_app.routing(unique)
    port_args = ["--metrics-port", str(port), "--stop-timeout", "10"]
    worker = subprocess.Popen(
        [CONSOLE_SCRIPT, "worker", "tests.support.observed_app:build", "--migrate", *port_args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/readyz"), timeout=30, what="the worker's /readyz")
        # When two events are published by another process
        publisher = Publisher(SqlRepository(postgres_engine), routing)
        request = PublishRequest(event_type=observed_app.EVENT_TYPE, payload={})
        ids = [publisher.publish(attrs.evolve(request, event_id=str(n))) for n in range(2)]
        # Then the worker's endpoint counts them published and consumed
        labels = {"service": observed_app.SERVICE, "event_type": observed_app.EVENT_TYPE}
        wait_for(
            lambda: value(scrape(f"{url}/metrics"), "outboxkit_consumed_total", **labels) == 2,
            timeout=30,
            what="2 consumed on the worker's /metrics",
        )
        samples = scrape(f"{url}/metrics")
        assert value(samples, "outboxkit_published_total", **labels) == 2
        route = routing.route_of_service(observed_app.SERVICE)
        repository = SqlRepository(postgres_engine)
        assert all(repository.get_by_event_id(route, i).status is Status.CONSUMED for i in ids)  # type: ignore[union-attr]
        # and says it is live and ready
        assert get_status(f"{url}/livez")[0] == 200
        assert get_status(f"{url}/readyz")[0] == 200
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
        drop_outbox(postgres_engine, routing, redis_url, observed_app.SERVICE)
    assert worker.returncode == 0, output


def _answers(url: str) -> bool:
    try:
        return get_status(url)[0] == 200
    except OSError:
        return False


def test_metrics_without_a_registry_get_their_own_not_the_global_one() -> None:
    # Given two engines' metrics built without a registry (a global one would collide)
    first, second = PrometheusMetrics(), PrometheusMetrics()
    # When one counts
    first.dead("orders", AUDITED)
    # Then only its own registry saw it
    labels = {"service": "orders", "event_type": AUDITED}
    assert first.registry.get_sample_value("outboxkit_dead_total", labels) == 1
    assert second.registry.get_sample_value("outboxkit_dead_total", labels) is None
