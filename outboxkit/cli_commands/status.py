"""``outboxkit status``: per service, rows by status, the oldest pending row's age, rows
published but unconsumed past the redelivery time, a retry histogram and the dead count.

``--watch [SECONDS]`` repeats it until interrupted (Ctrl-C exits 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from outboxkit.admin.status import ServiceStatus, status_report
from outboxkit.cli_commands.common import EXIT_OK
from outboxkit.cli_commands.durations import parse_duration
from outboxkit.cli_commands.options import add_output_arguments
from outboxkit.cli_commands.output import (
    format_age,
    format_time,
    help_text,
    print_json,
    print_table,
)
from outboxkit.cli_commands.targets import (
    Target,
    add_target_arguments,
    open_target,
    split_positionals,
)
from outboxkit.messages import Status

#: Refresh period of ``--watch`` without a value.
DEFAULT_WATCH_SECONDS = 2.0


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "status",
        parents=parents,
        help="rows by status, backlog age, stuck and dead rows per service",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("words", nargs="*", metavar="APP", help="module:attribute of an Engine")
    add_target_arguments(parser)
    parser.add_argument(
        "--redelivery-after",
        type=parse_duration,
        metavar="DURATION",
        help="published rows older than this count as stuck (default: the APP's "
        "republish_after, else 300s)",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=parse_duration,
        const=DEFAULT_WATCH_SECONDS,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C",
    )
    add_output_arguments(parser)
    parser.set_defaults(func=run, extra_words="words")


def run(args: argparse.Namespace) -> int:
    app, _ = split_positionals(args.words, max_ids=0)
    target = open_target(args, app)
    try:
        redelivery = args.redelivery_after
        if redelivery is None:
            redelivery = target.redelivery_after
        while True:
            _show(args, target, redelivery)
            if args.watch is None:
                return EXIT_OK
            try:
                time.sleep(args.watch)
            except KeyboardInterrupt:
                return EXIT_OK
    except KeyboardInterrupt:
        if args.watch is not None:
            return EXIT_OK
        raise
    finally:
        target.close()


def _show(args: argparse.Namespace, target: Target, redelivery: float) -> None:
    now = target.repository.now()
    report = status_report(target.repository, target.routes, redelivery_after=redelivery)
    if args.json:
        document = {
            "source": target.source,
            "at": now.isoformat() + "Z",
            "services": [s.to_dict() for s in report],
        }
        if args.watch is not None:  # one document per line, for tailing
            sys.stdout.write(json.dumps(document) + "\n")
            sys.stdout.flush()
        else:
            print_json(document)
        return
    if args.watch is not None and sys.stdout.isatty():
        sys.stdout.write("\x1b[2J\x1b[H")  # clear the terminal between refreshes
    print_table(
        [
            "service",
            "table",
            "pending",
            "published",
            "consumed",
            "dead",
            "oldest pending",
            f"stuck published (>{format_age(redelivery)})",
            "retries (count:rows)",
        ],
        [_row(s) for s in report],
        plain=args.plain,
        title=f"outboxkit status of {target.source} at {format_time(now)}",
    )
    if args.watch is not None and not sys.stdout.isatty():
        sys.stdout.write("\n")
        sys.stdout.flush()


def _row(status: ServiceStatus) -> list[object]:
    retries = " ".join(f"{label}:{n}" for label, n in status.retries.items() if n) or "-"
    return [
        status.service,
        status.table,
        status.counts[Status.PENDING],
        status.counts[Status.PUBLISHED],
        status.counts[Status.CONSUMED],
        status.dead,
        format_age(status.oldest_pending_age),
        status.stuck_published,
        retries,
    ]
