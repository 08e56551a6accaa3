"""Relay + consume throughput with one worker process, then with two, on one service.

Each worker process runs an :class:`~outboxkit.engine.Engine` (library defaults, one relay
and one consumer thread) with a no-op transactional handler over the same pre-filled
table and stream. Workers build everything, report ready, and start their engines only
when told, so process start-up is not timed; the clock stops when the parent sees every
row ``consumed``. The ratio says how much a second process adds on this 2-core machine.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import attrs
import sqlalchemy as sa

from benchmarks.common import EVENT_TYPE, Scratch, drop_table, new_run_id, progress, scratch_routing
from benchmarks.consume import noop
from benchmarks.env import Env
from benchmarks.figures import Figure, absolute, relative
from outboxkit.backends import SqlRepository
from outboxkit.engine import Engine, EngineConfig
from outboxkit.publish.publisher import Publisher

LABEL = "w"
DEADLINE_SECONDS = 300.0


@attrs.frozen(kw_only=True)
class WorkerSpec:
    """What a worker process needs (picklable, for the spawn start method)."""

    db_url: str
    redis_url: str
    run: str
    member: int
    ready: Any
    go: Any
    stop: Any


def worker_main(spec: WorkerSpec) -> None:
    """One worker process: an Engine serving the benchmark's service until told to stop."""
    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    db = sa.create_engine(spec.db_url)
    routing, _route = scratch_routing(spec.run, LABEL)
    engine = Engine(
        SqlRepository(db),
        RedisStreamsBroker.from_url(spec.redis_url),
        routing,
        config=EngineConfig(consumer_name=f"bench-{spec.run}-{spec.member}"),
    )
    engine.register_handler(EVENT_TYPE, noop)
    spec.ready.release()
    spec.go.wait(DEADLINE_SECONDS)
    engine.start()
    spec.stop.wait(DEADLINE_SECONDS)
    engine.stop(timeout=15)
    db.dispose()


def measure(env: Env, label: str, rows: int, processes: int) -> float:
    run = new_run_id()
    routing, route = scratch_routing(run, LABEL)
    db = env.db(label)
    repository = SqlRepository(db)
    repository.create_schema([route])
    env.created_stream(route.topic)
    ctx = multiprocessing.get_context("spawn")
    ready, go, stop = ctx.Semaphore(0), ctx.Event(), ctx.Event()
    workers = []
    try:
        Scratch(
            db=db,
            routing=routing,
            route=route,
            repository=repository,
            publisher=Publisher(repository, routing),
        ).fill(rows)
        for member in range(processes):
            process = ctx.Process(
                target=worker_main,
                args=(
                    WorkerSpec(
                        db_url=env.db_url(label),
                        redis_url=env.redis_url,
                        run=run,
                        member=member,
                        ready=ready,
                        go=go,
                        stop=stop,
                    ),
                ),
                name=f"bench-worker-{member}",
            )
            process.start()
            workers.append(process)
        for _ in workers:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a worker process did not get ready in 60 s")
        scratch = Scratch(db=db, routing=routing, route=route, repository=repository,
                          publisher=Publisher(repository, routing))  # fmt: skip
        started = time.perf_counter()
        go.set()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while scratch.count_status("consumed") < rows:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{processes} workers did not consume {rows} rows in time")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        go.set()
        for process in workers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        drop_table(db, route.table)
    rate = rows / elapsed
    progress(f"{processes} worker process(es), {label} + Redis: {rate:,.0f} rows/s end to end")
    return rate


def one_vs_two(env: Env, label: str, rows: int) -> list[Figure]:
    one = measure(env, label, rows, 1)
    two = measure(env, label, rows, 2)
    note = f"{rows:,} pre-filled rows, relayed and consumed; engine start-up inside the time"
    return [
        absolute(f"relay+consume, 1 worker process, {label} + Redis", one, unit="ev/s", note=note),
        relative(
            f"relay+consume, 2 worker processes vs 1, {label} + Redis",
            two,
            one,
            unit="ev/s",
            target=1.0,
            goal="ratio>=",
            note="raw = the 1-process figure; the issue sets no target, >= 1 means a second "
            "process does not slow the service down",
        ),
    ]
