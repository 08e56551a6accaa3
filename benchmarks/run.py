"""The performance benchmark: every figure of the Performance issue, each with its raw
baseline measured in the same run.

    .venv/bin/python -m benchmarks.run [--quick] [--only GROUP,...] [--json PATH]

Groups: publish, relay, consume, latency, claim, workers (default: all); ``--only`` also
takes any part of a figure's title, e.g. ``--only "PG + Kafka"``. ``--quick`` uses
small sizes and finishes in under 3 minutes; the full run takes about 15. The machines this
runs on are shared and noisy, so absolute figures mean little: each outboxkit figure is
reported as a ratio to the raw building block measured in the same run (interleaved with
it, medians over the rounds), with the same row shape (~300 B payload) and batch sizes.
Needs PostgreSQL, MariaDB and Redis as the tests do; starts its own Tansu for Kafka unless
``OUTBOXKIT_TEST_KAFKA_BOOTSTRAP`` is set. Progress goes to stderr, the table to stdout.

Exit status 1 when any figure failed: it could not run, or did not do all its work (fewer
events handled than published, a raw baseline that stopped short); such a figure is
``met: false`` with its ``failure``. A figure that ran in full and missed its target does
not change the exit status (its ``met`` is false, the table says NO).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from benchmarks import claim, consume, latency, publish, relay, workers
from benchmarks.common import progress
from benchmarks.env import Env, open_env
from benchmarks.figures import Figure, failed, failures, table, write_json


@attrs.frozen(kw_only=True)
class Sizes:
    """How much work each figure does; ``--quick`` trades precision for time."""

    rounds: int
    publish_single: int
    publish_many: int
    relay_rows: int
    consume_rows: int
    latency_seconds: float
    latency_rate: int
    claim_small: int
    claim_large: int
    worker_rows: int


QUICK = Sizes(
    rounds=1,
    publish_single=300,
    publish_many=2_000,
    relay_rows=2_000,
    consume_rows=2_000,
    latency_seconds=3.0,
    latency_rate=500,
    claim_small=10_000,
    claim_large=100_000,
    worker_rows=3_000,
)
FULL = Sizes(
    rounds=3,
    publish_single=1_000,
    publish_many=10_000,
    relay_rows=10_000,
    consume_rows=10_000,
    latency_seconds=15.0,
    latency_rate=500,
    claim_small=10_000,
    claim_large=1_000_000,
    worker_rows=20_000,
)

#: One entry per figure: (group, the function measuring it).
Measure = Callable[[Env, Sizes], Figure | list[Figure]]


def plan() -> list[tuple[str, str, Measure]]:
    """Every figure of the issue's table, in its order, then the additions of item 8."""
    s = "PG"
    m = "MariaDB"
    return [
        ("consume", "consumer PG + Redis",
         lambda e, z: consume.consumer_redis(e, s, z.consume_rows, z.rounds)),
        ("consume", "consumer PG + Kafka",
         lambda e, z: consume.consumer_kafka(e, s, z.consume_rows, z.rounds)),
        ("relay", "relay PG -> Redis",
         lambda e, z: relay.relay_to_redis(e, s, z.relay_rows, z.rounds)),
        ("relay", "relay MariaDB -> Redis",
         lambda e, z: relay.relay_to_redis(e, m, z.relay_rows, z.rounds)),
        ("relay", "relay PG -> Kafka",
         lambda e, z: relay.relay_to_kafka(e, s, z.relay_rows, z.rounds)),
        ("relay", "relay MariaDB -> Kafka",
         lambda e, z: relay.relay_to_kafka(e, m, z.relay_rows, z.rounds)),
        ("relay", "relay PG -> Kafka (librdkafka)",
         lambda e, z: relay.relay_to_kafka_librdkafka(e, s, z.relay_rows, z.rounds)),
        ("publish", "publish() 1 row/tx PG",
         lambda e, z: publish.publish_one_per_tx(e, s, z.publish_single, z.rounds)),
        ("publish", "publish() 1 row/tx MariaDB",
         lambda e, z: publish.publish_one_per_tx(e, m, z.publish_single, z.rounds)),
        ("publish", "publish_many(100) PG",
         lambda e, z: publish.publish_many(e, s, z.publish_many, z.rounds)),
        ("publish", "publish_many(100) MariaDB",
         lambda e, z: publish.publish_many(e, m, z.publish_many, z.rounds)),
        ("latency", "latency PG + Redis, same process",
         lambda e, z: latency.latency(e, s, "Redis", z, same_process=True)),
        ("latency", "latency PG + Redis, other process",
         lambda e, z: latency.latency(e, s, "Redis", z, same_process=False)),
        ("latency", "latency MariaDB + Redis, other process",
         lambda e, z: latency.latency(e, m, "Redis", z, same_process=False)),
        ("latency", "latency PG + Kafka, other process",
         lambda e, z: latency.latency(e, s, "Kafka", z, same_process=False)),
        ("claim", "MariaDB claim locks",
         lambda e, z: claim.claim_locks(e, m)),
        ("claim", "PG concurrent claims",
         lambda e, z: claim.concurrent_claims(e, s)),
        ("claim", "claim at 10k vs large, PG",
         lambda e, z: claim.claim_scaling(e, s, z.claim_small, z.claim_large)),
        ("claim", "claim at 10k vs large, MariaDB",
         lambda e, z: claim.claim_scaling(e, m, z.claim_small, z.claim_large)),
        ("workers", "1 vs 2 worker processes, PG + Redis",
         lambda e, z: workers.one_vs_two(e, s, z.worker_rows)),
    ]  # fmt: skip


def _picks(wanted: str, entry: tuple[str, str, Measure]) -> bool:
    """``--only`` takes a group name or any part of a figure's title."""
    group, title, _ = entry
    return wanted == group or wanted.lower() in title.lower()


def machine() -> dict[str, Any]:
    """Where the run was made (the versions of the servers are in docs/performance.md)."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument(
        "--only", default="", help="comma-separated groups or parts of titles (default: all)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    chosen = [entry for entry in plan() if not wanted or any(_picks(w, entry) for w in wanted)]
    unknown = [w for w in wanted if not any(_picks(w, entry) for entry in plan())]
    if unknown:
        parser.error(f"--only: nothing matches {unknown}")
    # A terminated run still drops its tables and streams (the finally blocks run).
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        figures = measure_all(chosen, sizes, quick=args.quick)
    finally:
        signal.signal(signal.SIGTERM, previous)
    elapsed = time.monotonic() - started
    mode = "--quick" if args.quick else "full"
    print(f"\noutboxkit benchmark ({mode}, {elapsed:.0f} s, {os.cpu_count()} cores)\n")
    print(table(figures))
    if args.json is not None:
        meta = {"mode": mode, "seconds": round(elapsed, 1), "sizes": attrs.asdict(sizes)}
        write_json(args.json, figures, {**meta, "machine": machine()})
        progress(f"wrote {args.json}")
    broken = failures(figures)
    if broken:
        print(f"\nFAILED: {len(broken)} of {len(figures)} figures could not be measured in full:")
        for figure in broken:
            print(f"  {figure.name}: {figure.failure}")
        return 1
    return 0


def measure_all(
    chosen: list[tuple[str, str, Measure]], sizes: Sizes, *, quick: bool
) -> list[Figure]:
    """Every chosen figure, in order; one that raises becomes a failed figure (``met``
    false, the exception as its ``failure``) and never stops the others."""
    figures: list[Figure] = []
    with open_env(quick=quick) as env:
        for number, (_group, title, measure) in enumerate(chosen, 1):
            progress(f"({number}/{len(chosen)}) {title}")
            try:
                result = measure(env, sizes)
            except Exception as exc:  # one broken figure must not lose the others
                traceback.print_exc()
                result = failed(title, "-", f"{type(exc).__name__}: {exc}")
            figures.extend(result if isinstance(result, list) else [result])
    return figures


if __name__ == "__main__":
    sys.exit(main())
