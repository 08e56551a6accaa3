"""``outboxkit health APP``: the engine's health report, for exec probes.

Prints the report (``--json`` for machines) and exits ``0`` when the probe passes, ``1`` when
it fails, ``2`` on a usage error or an app that cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from outboxkit.cli.output import shown
from outboxkit.engine import Engine
from outboxkit.errors import ConfigurationError
from outboxkit.observability.health import DEFAULT_TIMEOUT, LIVENESS, READINESS

#: Exit codes of ``outboxkit health``.
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


def add_health_command(sub: Any, load_app: Callable[[str], Engine]) -> None:
    """Add ``outboxkit health`` to the CLI's subparsers (``sub``)."""
    parser = sub.add_parser(
        "health",
        help="check an application's database, broker and backlog (exit 0 ok, 1 failing)",
        description="Exit codes: 0 the probe passes, 1 it fails, 2 usage error or app not "
        "loadable. Liveness fails only on dead worker threads; readiness also on an "
        "unreachable database or broker and, with --max-backlog-age, on a stale backlog.",
    )
    parser.add_argument("app", help="module:attribute of an Engine (or a factory of one)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--max-backlog-age",
        type=float,
        metavar="S",
        help="not ready when a pending row is older than S seconds",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"a database or broker check silent for S seconds fails (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--probe",
        choices=[LIVENESS, READINESS],
        default=READINESS,
        help="which verdict decides the exit code (default: readiness, which includes liveness)",
    )
    parser.set_defaults(func=lambda args: run_health_command(args, load_app))


def run_health_command(args: argparse.Namespace, load_app: Callable[[str], Engine]) -> int:
    """Print the report; the exit code is the verdict of ``--probe``."""
    try:
        engine = load_app(args.app)
    except (ImportError, AttributeError) as exc:
        # A probe must tell "the worker is unhealthy" (1) from "the probe is misconfigured".
        raise ConfigurationError(f"cannot load {args.app}: {exc}") from exc
    try:
        report = engine.health(max_backlog_age=args.max_backlog_age, timeout=args.timeout)
    finally:
        engine.stop(timeout=1.0)
    if args.json:
        print(json.dumps(report.to_dict(), default=str, sort_keys=True))
    else:
        print(f"live: {_yes(report.live)}  ready: {_yes(report.ready)}")
        for check in report.checks:
            verdict = "ok" if check.ok else "FAIL"
            line = f"{check.name:<9} {verdict:<4} ({check.probe})"
            why = _why(check.reason, check.error)
            print(f"{line}  {shown(why)}" if why else line)
    return EXIT_HEALTHY if report.passes(args.probe) else EXIT_UNHEALTHY


def _why(reason: str | None, error: str | None) -> str | None:
    """The reason, with the error's own words (host, user, table: this is the operator's
    terminal, unlike the HTTP probe) in place of the bare error type it ends with."""
    if not error:
        return reason
    kind = (reason or "").rsplit(": ", 1)[-1]
    if reason and error.startswith(f"{kind}: "):
        return f"{reason}{error[len(kind) :]}"
    return f"{reason}: {error}" if reason else error


def _yes(value: bool) -> str:
    return "yes" if value else "no"
