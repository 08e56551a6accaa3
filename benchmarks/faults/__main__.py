"""``python -m benchmarks.faults``: run the fault scenarios and print the verdict.

    python -m benchmarks.faults --quick                  # the CI subset, a few minutes
    python -m benchmarks.faults --events 100000          # the full soak (see docs/reliability.md)
    python -m benchmarks.faults --scenario kill-handler --database mariadb --broker redis

Exit status 0 only if every scenario passed: its fault demonstrably happened (the facts its
scenario requires were counted, no fault action was missed), nothing lost, nothing applied
twice, every poisoned event and no other dead, no forged effect, drained within the bound.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from benchmarks.faults import report, settings
from benchmarks.faults.runner import RunSettings, run_scenario
from benchmarks.faults.scenarios import BY_NAME, QUICK_RUNS, SCENARIOS

#: Database + broker pairs of the full soak when none is chosen.
FULL_COMBOS = (("pg", "kafka"), ("mariadb", "redis"))
#: The pair of ``--quick`` when a scenario, database or broker is named.
QUICK_COMBOS = (("pg", "redis"),)
QUICK_EVENTS = 600
QUICK_OUTAGE = 10.0
QUICK_DRAIN = 60.0
#: Events of the slow-handlers scenario that sleep, in ``--quick`` (10 otherwise).
QUICK_SLOW_EVENTS = 3


def quick_settings(**overrides: object) -> RunSettings:
    """The settings of the CI subset (``--quick``); ``overrides`` replace some."""
    values: dict[str, object] = {
        "events": QUICK_EVENTS,
        "outage_seconds": QUICK_OUTAGE,
        "drain_timeout": QUICK_DRAIN,
        "slow_events": QUICK_SLOW_EVENTS,
    }
    values.update(overrides)
    return RunSettings(**values)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CI subset: every scenario on pg+redis, one on pg+kafka and mariadb+redis",
    )
    parser.add_argument("--events", type=int, help="events per scenario (default 1000; quick 600)")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s published (100)")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(BY_NAME), help="repeatable; default all"
    )
    parser.add_argument("--database", action="append", choices=settings.DATABASES)
    parser.add_argument("--broker", action="append", choices=settings.BROKERS)
    parser.add_argument("--outage", type=float, help="broker outage seconds (30; quick 10)")
    parser.add_argument("--drain-timeout", type=float, help="drain bound s (120; quick 60)")
    parser.add_argument("--json", type=Path, help="write machine-readable results here")
    parser.add_argument("--keep", action="store_true", help="keep tables and work directories")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def planned_runs(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(scenario, database, broker) of each run, in order."""
    if args.quick and not (args.scenario or args.database or args.broker):
        return list(QUICK_RUNS)
    names = args.scenario or [s.name for s in SCENARIOS]
    return [(name, database, broker) for database, broker in combos(args) for name in names]


def combos(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.database or args.broker:
        databases = args.database or [d for d, _ in (QUICK_COMBOS if args.quick else FULL_COMBOS)]
        brokers = args.broker or [b for _, b in (QUICK_COMBOS if args.quick else FULL_COMBOS)]
        return list(dict.fromkeys(itertools.product(databases, brokers)))
    return list(QUICK_COMBOS if args.quick else FULL_COMBOS)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:22} {scenario.description}")
        return 0
    defaults = quick_settings() if args.quick else RunSettings()
    run = attrs.evolve(
        defaults,
        events=args.events or defaults.events,
        rate=args.rate,
        outage_seconds=args.outage or defaults.outage_seconds,
        drain_timeout=args.drain_timeout or defaults.drain_timeout,
        keep=args.keep,
    )
    command = "python -m benchmarks.faults " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    results = [
        run_scenario(BY_NAME[name], database, broker, run)
        for name, database, broker in planned_runs(args)
    ]
    print()
    for result in results:
        print(report.details(result))
    print()
    print(report.table(results))
    passed = all(r.passed for r in results)
    print(
        f"\n{'PASS' if passed else 'FAIL'}: {sum(r.passed for r in results)} of {len(results)} "
        f"scenario runs passed in {time.monotonic() - started:.0f} s"
    )
    if args.json:
        meta = {
            "command": command.strip(),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            "events": run.events,
            "rate": run.rate,
            "outage_seconds": run.outage_seconds,
            "drain_timeout": run.drain_timeout,
        }
        args.json.write_text(report.to_json(results, meta))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
