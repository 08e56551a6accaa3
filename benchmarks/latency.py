"""Commit -> handler start latency at a fixed publish rate.

A publisher publishes at a fixed rate (500 ev/s) for a bounded time, one event per
transaction, and notes the wall-clock time right after each commit. A worker (an
:class:`~outboxkit.engine.Engine` with its relay and consumer threads, library defaults)
runs a no-op transactional handler that notes the wall-clock time it started. Latency is
the difference per event id. "Other process" runs the publisher in a separate OS process
(the usual web + worker deployment: the worker's relay gets no in-process wake-up);
"same process" publishes from a thread of the worker through ``Engine.publish``.

Both clocks are ``time.time()`` on the same machine, so they agree across processes.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from benchmarks import raw
from benchmarks.common import (
    EVENT_TYPE,
    drop_table,
    new_run_id,
    progress,
    requests,
    scratch_routing,
)
from benchmarks.env import Env
from benchmarks.figures import (
    Figure,
    IncompleteWorkError,
    absolute,
    failed,
    failing,
    percentile,
)
from benchmarks.relay import kafka_broker, redis_broker
from outboxkit.backends import SqlRepository
from outboxkit.engine import Engine, EngineConfig
from outboxkit.messages import Event, PublishRequest
from outboxkit.publish.publisher import Publisher

#: p50 and p99 targets in milliseconds, per (database, broker, same process).
TARGETS: dict[tuple[str, str, bool], tuple[float | None, float | None]] = {
    ("PG", "Redis", True): (10.0, 50.0),
    ("PG", "Redis", False): (10.0, None),
    ("MariaDB", "Redis", False): (25.0, None),
    ("PG", "Kafka", False): (25.0, None),
}
#: How long to wait for the last events after the publisher stopped.
DRAIN_SECONDS = 60.0
#: How long the first event may take (a Kafka group join takes ~3 s on Tansu).
WARMUP_SECONDS = 60.0
KAFKA_ROUND_TRIPS = 50
SLOW_ROUND_TRIPS = 30


def paced(
    publish: Callable[[PublishRequest], None], rate: int, seconds: float
) -> list[tuple[str, float]]:
    """Publish ``rate * seconds`` events on a fixed schedule; (event id, commit time) each."""
    total = int(rate * seconds)
    batch = requests(total)
    committed: list[tuple[str, float]] = []
    start = time.monotonic()
    for i, request in enumerate(batch):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        publish(request)
        committed.append((request.event_id, time.time()))
    return committed


def publisher_main(db_url: str, run: str, rate: int, seconds: float, out: Any) -> None:
    """The other process: a plain Publisher on its own engine, one transaction per event."""
    db = sa.create_engine(db_url)
    routing, _route = scratch_routing(run, "lat")
    publisher = Publisher(SqlRepository(db), routing)

    def publish(request: PublishRequest) -> None:
        with db.begin() as conn:
            publisher.publish(request, connection=conn)

    try:
        out.put(paced(publish, rate, seconds))
    finally:
        db.dispose()


def run_publisher(
    env: Env, label: str, run: str, engine: Engine, *, sizes: Any, same: bool
) -> list[tuple[str, float]]:
    if same:
        db = env.db(label)

        def publish(request: PublishRequest) -> None:
            with db.begin() as conn:
                engine.publish(request, connection=conn)

        result: list[list[tuple[str, float]]] = []
        thread = threading.Thread(
            target=lambda: result.append(paced(publish, sizes.latency_rate, sizes.latency_seconds)),
            name="bench-publisher",
        )
        thread.start()
        thread.join()
        return result[0]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(
        target=publisher_main,
        args=(env.db_url(label), run, sizes.latency_rate, sizes.latency_seconds, queue),
        name="bench-publisher",
    )
    process.start()
    try:
        committed: list[tuple[str, float]] = queue.get(timeout=sizes.latency_seconds + 120)
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    return committed


def _wait(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def kafka_round_trip(env: Env) -> tuple[float, float, str | None]:
    """Raw kafka-python round trip p50 in ms, with fetch_max_wait_ms 10 and the default 500,
    and why the baseline is incomplete (a round trip never came back), if it is."""
    topic = f"bench-rt-{new_run_id()}"
    broker = kafka_broker(env)
    try:
        broker.ensure_topic(topic)
    finally:
        broker.close()
    env.created_topic(topic)
    fast = raw.kafka_round_trip(env.bootstrap, topic, KAFKA_ROUND_TRIPS, fetch_max_wait_ms=10)
    slow = raw.kafka_round_trip(env.bootstrap, topic, SLOW_ROUND_TRIPS, fetch_max_wait_ms=500)
    short = [
        f"{len(got)} of {asked} raw round trips ({wait} ms fetch wait) came back"
        for got, asked, wait in ((fast, KAFKA_ROUND_TRIPS, 10), (slow, SLOW_ROUND_TRIPS, 500))
        if len(got) < asked
    ]
    if not fast or not slow:
        raise IncompleteWorkError("; ".join(short))
    failure = "incomplete raw baseline: " + "; ".join(short) if short else None
    return percentile(fast, 0.5) * 1000, percentile(slow, 0.5) * 1000, failure


def latency(env: Env, label: str, kind: str, sizes: Any, *, same_process: bool) -> list[Figure]:
    run = new_run_id()
    routing, route = scratch_routing(run, "lat")
    db = env.db(label)
    repository = SqlRepository(db)
    broker = redis_broker(env) if kind == "Redis" else kafka_broker(env)
    if kind == "Redis":
        env.created_stream(route.topic)
    else:
        env.created_topic(route.topic)
    engine = Engine(repository, broker, routing, config=EngineConfig(consumer_name=f"bench-{run}"))
    started: dict[str, float] = {}

    @engine.register_handler(EVENT_TYPE)
    def mark_start(event: Event, connection: Any) -> None:
        started.setdefault(event.event_id, time.time())

    engine.create_schema()
    where = "same process" if same_process else "other process"
    name = f"commit -> handler start, {label} + {kind}, {where}"
    try:
        engine.start()
        warm = requests(1)[0]
        engine.publish(warm)
        if not _wait(lambda: warm.event_id in started, WARMUP_SECONDS):
            raise RuntimeError(f"{name}: the warm-up event was not handled in {WARMUP_SECONDS} s")
        committed = run_publisher(env, label, run, engine, sizes=sizes, same=same_process)
        _wait(lambda: all(e in started for e, _ in committed), DRAIN_SECONDS)
    finally:
        engine.stop(timeout=15)
        drop_table(db, route.table)
    p50_target, p99_target = TARGETS[(label, kind, same_process)]
    raw_p50, raw_note, raw_failure = None, "", None
    if kind == "Kafka":
        raw_p50, raw_default, raw_failure = kafka_round_trip(env)
        progress(
            f"raw kafka-python round trip p50 {raw_p50:.1f} ms ({raw_default:.0f} ms default wait)"
        )
        raw_note = (
            f"raw = kafka-python round trip p50 with fetch_max_wait_ms=10 "
            f"({raw_default:.0f} ms with the default 500)"
        )
    figures = latency_figures(
        name,
        committed,
        started,
        seconds=sizes.latency_seconds,
        p50_target=p50_target,
        p99_target=p99_target,
        raw_p50=raw_p50,
        raw_note=raw_note,
    )
    progress(f"{name}: {figures[0].note}; p50 {figures[0].value} ms, p99 {figures[2].value} ms")
    if raw_failure is not None:
        figures[0] = failing(figures[0], raw_failure)
    return figures


def latency_figures(
    name: str,
    committed: Sequence[tuple[str, float]],
    started: Mapping[str, float],
    *,
    seconds: float,
    p50_target: float | None,
    p99_target: float | None,
    raw_p50: float | None = None,
    raw_note: str = "",
) -> list[Figure]:
    """p50, p95 and p99 of commit -> handler start over **every** committed event.

    An event never handled counts as infinitely late (a miss): it is in every percentile's
    sample, so p50 cannot be met while most events never arrived; and any such event fails
    all three figures (the run did not do its work).
    """
    samples = [(started[e] - t) * 1000 if e in started else math.inf for e, t in committed]
    missing = sum(1 for e, _ in committed if e not in started)
    handled = sorted(started[e] for e, _ in committed if e in started)
    span = handled[-1] - handled[0] if len(handled) > 1 else 0.0
    handled_rate = (len(handled) - 1) / span if span > 0 else float("nan")
    note = (
        f"{len(committed)} events published at {len(committed) / seconds:,.0f} ev/s for "
        f"{seconds:g} s, handled at {handled_rate:,.0f} ev/s"
    )
    if raw_note:
        note += f"; {raw_note}"
    if not samples:
        return [
            failed(f"{name}, {p}", "ms", "no event was published", target=t, goal="value<=")
            for p, t in (("p50", p50_target), ("p95", None), ("p99", p99_target))
        ]
    figures = [
        absolute(f"{name}, p50", percentile(samples, 0.5), unit="ms", target=p50_target,
                 raw=raw_p50, note=note),
        absolute(f"{name}, p95", percentile(samples, 0.95), unit="ms"),
        absolute(f"{name}, p99", percentile(samples, 0.99), unit="ms", target=p99_target),
    ]  # fmt: skip
    if missing:
        reason = (
            f"{missing} of {len(committed)} events not handled within {DRAIN_SECONDS:g} s "
            "after the last publish (counted as misses)"
        )
        figures = [failing(f, reason) for f in figures]
    return figures
