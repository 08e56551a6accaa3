"""What every benchmark shares: the row shape, scratch routes, progress, timing.

Names are unique per run (``bench_<run>_...``) and everything created is dropped at the
end, because the servers are shared with other engineers.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.messages import PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route, Routing, ServiceCatalog

#: The event of every benchmark: ~300 bytes of JSON payload, like a typical domain event.
PAYLOAD: dict[str, Any] = {
    "order_id": 0,
    "customer": "c" * 40,
    "items": [{"sku": "x" * 20, "qty": 2}] * 4,
    "note": "n" * 60,
}
EVENT_TYPE = "bench.event"
#: Distinct message keys: enough to spread over partitions, few enough to share them.
KEYS = 50

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr with the seconds since the run started."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


def requests(count: int, start: int = 0) -> list[PublishRequest]:
    """``count`` publish requests of the benchmark's row shape."""
    return [
        PublishRequest(event_type=EVENT_TYPE, message_key=f"k{i % KEYS}", payload=PAYLOAD)
        for i in range(start, start + count)
    ]


@attrs.frozen(kw_only=True)
class Rate:
    """``count`` units of work done in ``seconds`` (setup excluded)."""

    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    @property
    def seconds_each(self) -> float:
        return self.seconds / self.count if self.count else float("inf")


def interleaved(measures: Sequence[Callable[[], Rate]], rounds: int) -> list[list[Rate]]:
    """Run each measure once per round, in turn (raw, ours, raw, ours, ...).

    Interleaving spreads the machine's drift over both sides; callers take medians.
    """
    results: list[list[Rate]] = [[] for _ in measures]
    for _ in range(rounds):
        for index, measure in enumerate(measures):
            results[index].append(measure())
    return results


def median_rate(rates: Sequence[Rate]) -> float:
    ordered = sorted(r.per_second for r in rates)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@attrs.define
class Scratch:
    """One benchmark service: its routing, repository and publisher on a fresh table."""

    db: sa.Engine
    routing: Routing
    route: Route
    repository: SqlRepository
    publisher: Publisher

    @property
    def table(self) -> str:
        return self.route.table

    def fill(self, count: int, *, chunk: int = 500) -> None:
        """Publish ``count`` pending rows through the library (setup, never timed)."""
        for start in range(0, count, chunk):
            with self.db.begin() as conn:
                self.publisher.publish_many(
                    requests(min(chunk, count - start), start), connection=conn
                )

    def ids(self) -> list[int]:
        with self.db.connect() as conn:
            return [int(r[0]) for r in conn.execute(sa.text(f"SELECT id FROM {self.table}"))]

    def count_status(self, status: str) -> int:
        with self.db.connect() as conn:
            return int(
                conn.execute(
                    sa.text(f"SELECT COUNT(*) FROM {self.table} WHERE status = :s"), {"s": status}
                ).scalar_one()
            )


def scratch_routing(run: str, label: str) -> tuple[Routing, Route]:
    """A routing with one service whose table, topic and group are unique to this run."""
    catalog = ServiceCatalog(namespace=f"bench-{run}")
    service = f"b{run}{label}"
    catalog.configure(
        service,
        table=f"bench_{run}_{label}",
        topic=f"bench-{run}-{label}",
        group=f"bench-{run}-{label}-g",
    )
    routing = Routing(catalog)
    route = routing.register(EVENT_TYPE, service)
    return routing, route


@contextlib.contextmanager
def scratch(db: sa.Engine, label: str) -> Iterator[Scratch]:
    """A fresh outbox table (the library's own schema) for one measurement; dropped after."""
    routing, route = scratch_routing(new_run_id(), label)
    repository = SqlRepository(db)
    repository.create_schema([route])
    try:
        yield Scratch(
            db=db,
            routing=routing,
            route=route,
            repository=repository,
            publisher=Publisher(repository, routing),
        )
    finally:
        drop_table(db, route.table)


def drop_table(db: sa.Engine, table: str) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
