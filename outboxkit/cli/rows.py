"""``outboxkit rows``: list the rows of one service in any status, by the dead-letter filters.

What ``status`` counts, shown row by row: the pending backlog (``--status pending``, the
default), and with ``--stuck`` the rows published but not consumed past the redelivery
time. ``--older-than`` keeps rows unchanged for longer than a duration (for a pending row
its last attempt or claim, for a published one its publication).
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import attrs

from outboxkit.cli.common import EXIT_OK, UsageError
from outboxkit.cli.durations import parse_duration
from outboxkit.cli.listing import print_rows
from outboxkit.cli.options import (
    add_filter_arguments,
    add_output_arguments,
    selection_from,
)
from outboxkit.cli.output import help_text
from outboxkit.cli.targets import add_target_arguments, open_target, split_positionals
from outboxkit.messages import Status

#: Rows per page by default.
DEFAULT_LIMIT = 50


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "rows",
        parents=parents,
        help="list a service's pending, stuck, consumed or dead rows",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("words", nargs="*", metavar="APP", help="module:attribute of an Engine")
    add_target_arguments(parser)
    parser.add_argument(
        "--status",
        choices=[s.value for s in Status],
        default=Status.PENDING.value,
        help="rows in this status (default pending)",
    )
    parser.add_argument(
        "--stuck",
        action="store_true",
        help="published rows not consumed past the redelivery time (the APP's "
        "republish_after, else 300s; --older-than overrides)",
    )
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="only rows unchanged for longer than this",
    )
    add_filter_arguments(parser, changed="last changed")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="rows per page")
    parser.add_argument("--after", type=int, default=0, help="only ids above this")
    add_output_arguments(parser)
    parser.set_defaults(func=run, extra_words="words")


def run(args: argparse.Namespace) -> int:
    app, _ = split_positionals(args.words, max_ids=0)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.stuck and args.status not in (Status.PENDING.value, Status.PUBLISHED.value):
        raise UsageError("--stuck lists published rows; it cannot go with --status " + args.status)
    status = Status.PUBLISHED if args.stuck else Status(args.status)
    target = open_target(args, app)
    try:
        route = target.single_route()
        repository = target.repository
        row_filter = selection_from(args, repository, None).row_filter(status)
        older_than = args.older_than
        if args.stuck and older_than is None:
            older_than = target.redelivery_after
        if older_than is not None:
            cutoff = repository.now() - timedelta(seconds=older_than)
            if row_filter.changed_before is None or cutoff < row_filter.changed_before:
                row_filter = attrs.evolve(row_filter, changed_before=cutoff)
        rows = repository.find_rows(route, row_filter, limit=args.limit, after_id=args.after)
        what = "stuck published" if args.stuck else status.value
        print_rows(args, route, rows, what=what, changed="changed")
        return EXIT_OK
    finally:
        target.close()
