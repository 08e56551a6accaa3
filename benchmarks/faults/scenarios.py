"""The named scenarios: which workers run, what the handler does, which fault is injected,
and what proves that the fault happened.

Every scenario also publishes poisoned events (about 1 %, rejected with ``PermanentError``):
those, and only those, must end ``dead``.

``requires`` names the counted facts (see :mod:`benchmarks.faults.injectors`) a run must
show, with their minimums: a run whose fault did not demonstrably happen fails, whatever
its other counts.
"""

from __future__ import annotations

import attrs

from benchmarks.faults import injectors
from benchmarks.faults.injectors import BAD_KINDS, Injector, injected


@attrs.frozen(kw_only=True)
class Scenario:
    name: str
    description: str
    #: Role of each worker process started at the beginning.
    workers: tuple[str, ...]
    inject: Injector
    handler_sleep: float = 0.0
    #: Slow handlers: how many events (spread over the run) sleep, and for how long.
    slow_events: int = 0
    slow_seconds: float = 0.0
    #: Extra drain allowance on top of the run's bound (slow handlers need it).
    extra_drain: float = 0.0
    #: (fact, minimum) pairs the run must show for its fault to count as done.
    requires: tuple[tuple[str, int], ...] = ()


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="kill-relay",
        description="kill -9 relay-only workers every 1.5-3 s while they publish; "
        "a consume-only worker keeps handling",
        workers=("relay", "relay", "consume"),
        inject=injectors.kill_workers("relay"),
        requires=((injectors.KILLS, 1),),
    ),
    Scenario(
        name="kill-handler",
        description="kill -9 consume-only workers every 1.5-3 s in the middle of handlers "
        "(each handler sleeps 20 ms in its transaction)",
        workers=("relay", "consume", "consume"),
        inject=injectors.kill_workers("consume"),
        handler_sleep=0.02,
        requires=((injectors.KILLS, 1), (injectors.KILLED_MID_HANDLER, 1)),
    ),
    Scenario(
        name="three-workers",
        description="three workers relaying and consuming one service at once, no fault",
        workers=("both", "both", "both"),
        inject=injectors.no_fault,
        requires=((injectors.WORKERS_APPLYING, 3),),
    ),
    Scenario(
        name="broker-restart-empty",
        description="broker stopped a third into publishing, restarted EMPTY after the outage; "
        "handlers take 30 ms so a backlog of published-unconsumed messages is lost with it, "
        "and the stuck-published rescue must deliver everything",
        workers=("both", "both"),
        inject=injectors.broker_outage,
        handler_sleep=0.03,
        requires=(
            (injectors.BROKER_DOWN, 1),
            (injectors.BROKER_BACK, 1),
            (injectors.STRANDED, 1),
            (injectors.RESCUED, 1),
        ),
    ),
    Scenario(
        name="db-terminate",
        description="all the run's database connections (workers and publisher) terminated "
        "server-side every 0.5-1.5 s, hitting claims, mark_published, consumes and publishes",
        workers=("both", "both"),
        inject=injectors.terminate_connections,
        handler_sleep=0.005,
        requires=((injectors.KILL_ROUNDS, 1), (injectors.CONNECTIONS_TERMINATED, 1)),
    ),
    Scenario(
        name="garbage-forged",
        description="random bytes, truncated, oversized, non-object and forged envelopes "
        "(naming real unconsumed rows) put on the topic with a raw client",
        workers=("both", "both"),
        inject=injectors.garbage_and_forged,
        requires=tuple((injected(kind), 1) for kind in BAD_KINDS),
    ),
    Scenario(
        name="slow-handlers",
        description="10 events whose handler sleeps 8 s, longer than the Redis claim idle "
        "(3 s) and the republish_after rescue (8 s)",
        workers=("both", "both"),
        inject=injectors.no_fault,
        slow_events=10,
        slow_seconds=8.0,
        extra_drain=60.0,
        requires=((injectors.SLOW_CALLS, 1),),
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}

#: The CI subset (``--quick``, ``tests/benchmarks/test_faults.py``) as (scenario, database,
#: broker): every scenario on PostgreSQL + Redis Streams, and a short run on each pair of the
#: soak, PostgreSQL + Kafka and MariaDB + Redis, of the fault that is most their own.
QUICK_RUNS: tuple[tuple[str, str, str], ...] = (
    *((s.name, "pg", "redis") for s in SCENARIOS),
    ("broker-restart-empty", "pg", "kafka"),
    ("db-terminate", "mariadb", "redis"),
)
