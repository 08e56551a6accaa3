"""RetryPolicy: exponential backoff with jitter and a cap, and the Go schedule; and what
``max_retry`` counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository, create_sqlite_engine
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine, EngineConfig
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.publish.publisher import PublisherConfig
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Routing


def test_default_policy_doubles_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(base_delay=1.0, multiplier=2.0, max_delay=10.0, jitter=0.0)

    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(10_000) == 10.0  # no overflow for absurd attempt numbers
    assert policy.delay(0) == 1.0


def test_jitter_spreads_delays_within_its_fraction_and_never_past_the_cap() -> None:
    low = RetryPolicy(base_delay=4.0, jitter=0.25, random=lambda: 0.0)
    high = RetryPolicy(base_delay=4.0, jitter=0.25, random=lambda: 1.0)
    capped = RetryPolicy(base_delay=100.0, max_delay=100.0, jitter=0.5, random=lambda: 1.0)

    assert low.delay(1) == pytest.approx(3.0)
    assert high.delay(1) == pytest.approx(5.0)
    assert capped.delay(3) == 100.0


def test_go_schedule_is_n_squared_seconds_capped_at_100() -> None:
    policy = RetryPolicy.go_quadratic()

    assert [policy.delay(n) for n in (1, 2, 3, 10, 11, 20)] == [1, 4, 9, 100, 100, 100]


def test_fixed_policy_waits_the_same_every_time() -> None:
    policy = RetryPolicy.fixed(0.5)

    assert {policy.delay(n) for n in range(1, 30)} == {0.5}


def test_invalid_settings_are_rejected_at_construction() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)


def test_max_retry_counts_attempts_in_all_so_three_means_three_handler_runs(
    tmp_path: Path,
) -> None:
    # Given max_retry=3 (the name is the Go column's) and a handler that always fails
    db = create_sqlite_engine(f"sqlite:///{tmp_path / 'retries.db'}")
    routing = Routing()
    routing.register("job.requested", "jobs")
    config = EngineConfig(publisher=PublisherConfig(max_retry=3), retry=RetryPolicy.fixed(0.0))
    engine = Engine(SqlRepository(db), MemoryBroker(), routing, config=config)
    attempts: list[int] = []

    @engine.register_handler("job.requested")
    def fail(event: Event, connection: Connection) -> None:
        attempts.append(event.attempt)
        raise RuntimeError("downstream is gone")

    engine.create_schema()
    event_id = engine.publish(PublishRequest(event_type="job.requested", payload={}))
    # When the engine runs until nothing is left to do
    while engine.run_once(receive_timeout=0.1):
        pass
    # Then the handler ran three times in all (not once plus three retries), and the row
    # is dead with three failed attempts counted
    assert attempts == [1, 2, 3]
    row = engine.repository.get_by_event_id(routing.route_of_service("jobs"), event_id)
    assert row is not None and row.status is Status.DEAD
    assert (row.retry_count, row.max_retry) == (3, 3)
    engine.repository.close()
