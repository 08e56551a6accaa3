"""``outboxkit demo --scenario orchestrator`` end to end: the embedded default, and real
PostgreSQL + MariaDB over Redis and over Kafka.

Each run must complete every flow exactly once: five handled events per command, each
caused by the one before, all of the command's correlation id; one task completed and one
character written on the writer's own database; each inbox holding one consumed row per
flow; and the printed chain must show it.
"""

from __future__ import annotations

import io

import pytest

from outboxkit.cli.demo_orchestrator import CHAIN, chain_is_linear, run_orchestrator_demo
from outboxkit.cli.main import main
from outboxkit.testing import services
from outboxkit.testing.redis_server import RedisServer


def _assert_complete(out: str, commands: int) -> None:
    assert "result                      OK" in out
    assert f"complete causal chains      {commands} of {commands}" in out
    for n, event_type in enumerate(CHAIN, 1):
        assert f"  {n}. {event_type}" in out
    assert ": COMPLETED (character of session-1)" in out


def test_embedded_default_runs_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenario", "orchestrator"]) == 0
    out = capsys.readouterr().out
    _assert_complete(out, 3)
    assert "sqlite" in out and "memory://" in out
    assert "writer attempts redelivered 1" in out


def test_flows_are_linear_and_complete_exactly_once() -> None:
    out = io.StringIO()
    summary = run_orchestrator_demo(commands=4, out=out)
    assert summary.ok, out.getvalue()
    assert summary.tasks_completed == summary.characters == summary.completed_flows == 4
    assert summary.inbox_consumed == {"writer-tasks": 4, "writer-results": 4}
    assert len(summary.chains) == 4
    for correlation_id, chain in summary.chains.items():
        assert chain_is_linear(chain)
        assert chain[0].event_id == correlation_id
        assert [s.handled_on for s in chain] == [
            "orchestrator",
            "orchestrator",
            "writer",
            "orchestrator",
            "orchestrator",
        ]


@pytest.mark.postgres
@pytest.mark.mysql
def test_postgres_orchestrator_and_mariadb_writer_over_redis(
    postgres_engine: object, mysql_engine: object, redis_url: str
) -> None:
    out = io.StringIO()
    summary = run_orchestrator_demo(
        database_url=services.postgres_url(),
        capability_database_url=services.mysql_url(),
        broker_url=redis_url,
        out=out,
    )
    assert summary.ok, out.getvalue()
    _assert_complete(out.getvalue(), 3)


@pytest.mark.postgres
@pytest.mark.mysql
def test_mariadb_orchestrator_and_postgres_writer_over_kafka(
    postgres_engine: object, mysql_engine: object, kafka_bootstrap: str
) -> None:
    out = io.StringIO()
    summary = run_orchestrator_demo(
        database_url=services.mysql_url(),
        capability_database_url=services.postgres_url(),
        broker_url=f"kafka://{kafka_bootstrap}",
        timeout=90,
        out=out,
    )
    assert summary.ok, out.getvalue()
    _assert_complete(out.getvalue(), 3)


@pytest.mark.redis
def test_the_broker_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a Redis server whose user "outboxkit" has a password (issue #18, row 5)
    secret = "s3cret-pw"
    acl = ["--user", "outboxkit", "on", f">{secret}", "~*", "&*", "+@all"]
    with RedisServer(args=acl) as server:
        url = f"redis://outboxkit:{secret}@127.0.0.1:{server.port}/0"
        # When the demo runs over it
        code = main(["demo", "--scenario", "orchestrator", "--broker-url", url])
    printed = capsys.readouterr()
    # Then it works, and says which broker without the password
    assert code == 0, printed.err
    _assert_complete(printed.out, 3)
    assert secret not in printed.out + printed.err
    assert f"redis://outboxkit:***@127.0.0.1:{server.port}/0" in printed.out
