"""The CI subset of the fault suite: real worker processes, real databases and brokers.

Each run of ``benchmarks.faults.scenarios.QUICK_RUNS`` (every scenario on PostgreSQL + Redis
Streams, a short run on PostgreSQL + Kafka and one on MariaDB + Redis) runs as in ``python -m
benchmarks.faults --quick`` (600 events at 100/s, a 10 s broker outage, 3 slow events) and
must pass the suite's verdict: its fault demonstrably happened, nothing lost, nothing applied
twice, only poisoned events dead, no forged effect, drained in time. And a scenario whose
injector does nothing must fail. Select with ``-m faults``; the module takes about 3 minutes.
"""

from __future__ import annotations

import attrs
import pytest

from benchmarks.faults import injectors, report
from benchmarks.faults.__main__ import quick_settings
from benchmarks.faults.runner import run_scenario
from benchmarks.faults.scenarios import BY_NAME, QUICK_RUNS
from outboxkit.testing import services

pytestmark = [
    pytest.mark.faults,
    pytest.mark.postgres,
    pytest.mark.mysql,
    pytest.mark.kafka,
    pytest.mark.timeout(300),
]

QUICK_RUN = quick_settings(
    database_urls={"pg": services.postgres_url(), "mariadb": services.mysql_url()}
)


@pytest.mark.parametrize(
    ("name", "database", "broker"), QUICK_RUNS, ids=[f"{n}-{d}+{b}" for n, d, b in QUICK_RUNS]
)
def test_scenario_loses_nothing_and_applies_nothing_twice(
    name: str, database: str, broker: str, request: pytest.FixtureRequest
) -> None:
    # Given the workers, publisher and fault of the scenario (the engine fixture fails the
    # test loudly when its database is down). When it runs. Then its verdict passes.
    request.getfixturevalue("postgres_engine" if database == "pg" else "mysql_engine")
    result = run_scenario(BY_NAME[name], database, broker, QUICK_RUN)
    assert result.passed, report.details(result)


def test_a_scenario_whose_injector_does_nothing_fails(postgres_engine: object) -> None:
    # Given kill-handler with its injector disabled (it only waits for the publisher)
    idle = attrs.evolve(BY_NAME["kill-handler"], inject=injectors.no_fault)
    # When it runs, everything else as in CI (so every promise holds)
    result = run_scenario(idle, "pg", "redis", attrs.evolve(QUICK_RUN, events=300))
    # Then it fails because no kill was demonstrated, and for nothing else
    assert not result.passed, report.details(result)
    assert result.problems == [
        "fault not demonstrated: kill -9 done = 0, the scenario needs >= 1",
        "fault not demonstrated: handler calls cut by kill -9 = 0, the scenario needs >= 1",
    ], report.details(result)
    assert set(result.promises.values()) == {0}
