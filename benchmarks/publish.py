"""``publish()`` and ``publish_many()`` against raw INSERTs into the same schema.

Both sides write to tables created by the library (same columns and indexes), the raw side
with plain SQLAlchemy Core statements naming every column the library fills.
"""

from __future__ import annotations

import time

from benchmarks import raw
from benchmarks.common import Rate, interleaved, median_rate, progress, requests, scratch
from benchmarks.env import Env
from benchmarks.figures import Figure, cost, throughput

BATCH = 100
SINGLE_TARGET = 1.15
MANY_TARGET = 0.8


def publish_one_per_tx(env: Env, label: str, count: int, rounds: int) -> Figure:
    """Cost of ``publish()`` 1 row per transaction vs a raw INSERT + commit."""
    db = env.db(label)
    with scratch(db, "pub1") as ours, scratch(db, "pub1raw") as bare:

        def measure_raw() -> Rate:
            return raw.insert_one_per_commit(db, bare.table, count, bare.route.topic)

        def measure_ours() -> Rate:
            batch = requests(count)
            started = time.perf_counter()
            for request in batch:
                with db.begin() as conn:
                    ours.publisher.publish(request, connection=conn)
            return Rate(count=count, seconds=time.perf_counter() - started)

        raws, mine = interleaved([measure_raw, measure_ours], rounds)
    raw_rate, our_rate = median_rate(raws), median_rate(mine)
    progress(f"publish 1 row/tx {label}: raw {raw_rate:,.0f}/s, publish() {our_rate:,.0f}/s")
    return cost(
        f"publish() 1 row/tx, cost vs raw INSERT+commit, {label}",
        1 / our_rate,
        1 / raw_rate,
        target=SINGLE_TARGET,
    )


def publish_many(env: Env, label: str, count: int, rounds: int) -> Figure:
    """``publish_many(100)`` per transaction vs a raw executemany of 100 into the same schema."""
    db = env.db(label)
    with scratch(db, "pubm") as ours, scratch(db, "pubmraw") as bare:

        def measure_raw() -> Rate:
            return raw.insert_executemany(db, bare.table, count, bare.route.topic, BATCH)

        def measure_ours() -> Rate:
            batches = [requests(BATCH, start) for start in range(0, count, BATCH)]
            started = time.perf_counter()
            for batch in batches:
                with db.begin() as conn:
                    ours.publisher.publish_many(batch, connection=conn)
            return Rate(count=count, seconds=time.perf_counter() - started)

        raws, mine = interleaved([measure_raw, measure_ours], rounds)
    raw_rate, our_rate = median_rate(raws), median_rate(mine)
    progress(f"publish_many(100) {label}: raw {raw_rate:,.0f}/s, ours {our_rate:,.0f}/s")
    return throughput(
        f"publish_many(100) vs raw executemany, {label}",
        our_rate,
        raw_rate,
        target=MANY_TARGET,
        unit="rows/s",
    )
