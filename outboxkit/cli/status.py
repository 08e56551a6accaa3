"""``outboxkit status``: per service, rows by status, the oldest pending row's age, rows
published but unconsumed past the redelivery time, a retry histogram and the dead count.

``--watch [SECONDS]`` repeats it until interrupted (Ctrl-C or SIGTERM exits 0). While it
watches, a signal only asks the loop to stop: a ``KeyboardInterrupt`` landing in the middle
of a query could leave a driver connection half-read (PyMySQL reads in Python), and closing
it then hung the command past the caller's patience.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from outboxkit.admin.status import ServiceStatus, status_report
from outboxkit.cli.common import EXIT_OK
from outboxkit.cli.durations import parse_duration
from outboxkit.cli.options import add_output_arguments
from outboxkit.cli.output import (
    format_age,
    format_time,
    print_json,
    print_table,
)
from outboxkit.cli.targets import (
    Target,
    add_target_arguments,
    open_target,
    split_positionals,
)
from outboxkit.messages import Status

#: Refresh period of ``--watch`` without a value.
DEFAULT_WATCH_SECONDS = 2.0

#: What ``outboxkit status --help`` tells an operator (the module docstring is for developers).
DESCRIPTION = f"""\
Show the outbox of each service, one line per service:

  pending, published, consumed, dead
                    how many rows are in each status
  oldest pending    age of the oldest pending row (not yet published, or waiting
                    for a retry), counted from when it was written
  stuck published   rows published but not consumed within the redelivery time
                    (--redelivery-after); the relay will publish them again, and
                    many mean a consumer is down or messages are being lost
  retries           retry counts of the rows not yet final, as count:rows

Work on APP (module:attribute of your Engine), or on --database-url with --service.
--watch refreshes the report every {DEFAULT_WATCH_SECONDS:g} s (or SECONDS) until Ctrl-C;
--json prints one JSON document (with --watch, one per refresh, one per line).
"""


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "status",
        parents=parents,
        help="rows by status, backlog age, stuck and dead rows per service",
        description=DESCRIPTION,
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
        if args.watch is None:
            _show(args, target, redelivery)
            return EXIT_OK
        try:
            with _stop_on_signals() as stop:
                while not stop.is_set():
                    _show(args, target, redelivery)
                    stop.wait(args.watch)
        except KeyboardInterrupt:  # a second signal, or off the main thread
            pass
        return EXIT_OK
    finally:
        target.close()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event the first SIGINT or SIGTERM sets (instead of raising), for the watch loop.

    A second signal raises ``KeyboardInterrupt`` as usual, so a query stuck on a database
    that does not answer can still be interrupted. Off the main thread (where handlers
    cannot be installed) signals keep their usual effect.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


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
