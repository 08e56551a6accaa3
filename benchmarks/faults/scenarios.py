"""The named scenarios: which workers run, what the handler does, which fault is injected.

Every scenario also publishes poisoned events (about 1 %, rejected with ``PermanentError``):
those, and only those, must end ``dead``.
"""

from __future__ import annotations

import attrs

from benchmarks.faults import injectors
from benchmarks.faults.injectors import Injector


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


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="kill-relay",
        description="kill -9 relay-only workers every 1.5-3 s while they publish; "
        "a consume-only worker keeps handling",
        workers=("relay", "relay", "consume"),
        inject=injectors.kill_workers("relay"),
    ),
    Scenario(
        name="kill-handler",
        description="kill -9 consume-only workers every 1.5-3 s in the middle of handlers "
        "(each handler sleeps 20 ms in its transaction)",
        workers=("relay", "consume", "consume"),
        inject=injectors.kill_workers("consume"),
        handler_sleep=0.02,
    ),
    Scenario(
        name="three-workers",
        description="three workers relaying and consuming one service at once, no fault",
        workers=("both", "both", "both"),
        inject=injectors.no_fault,
    ),
    Scenario(
        name="broker-restart-empty",
        description="broker stopped a third into publishing, restarted EMPTY after the outage; "
        "handlers take 30 ms so a backlog of published-unconsumed messages is lost with it, "
        "and the stuck-published rescue must deliver everything",
        workers=("both", "both"),
        inject=injectors.broker_outage,
        handler_sleep=0.03,
    ),
    Scenario(
        name="db-terminate",
        description="all the run's database connections (workers and publisher) terminated "
        "server-side every 0.5-1.5 s, hitting claims, mark_published, consumes and publishes",
        workers=("both", "both"),
        inject=injectors.terminate_connections,
        handler_sleep=0.005,
    ),
    Scenario(
        name="garbage-forged",
        description="random bytes, truncated, oversized, non-object and forged envelopes "
        "(naming real unconsumed rows) put on the topic with a raw client",
        workers=("both", "both"),
        inject=injectors.garbage_and_forged,
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
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}

#: The CI subset: the faults that matter most, on PostgreSQL + Redis Streams.
QUICK = ("kill-handler", "garbage-forged", "db-terminate", "broker-restart-empty")
