"""``outboxkit purge``: retention. Delete ``consumed`` rows unchanged for longer than
``--older-than`` and, with ``--dead-older-than``, ``dead`` rows too.

Runs in batches of ``--batch-size`` rows, each deleting only rows still in the status, so it
is safe while workers run and fit for cron. Ages are judged by the database clock.
``--dry-run`` counts and deletes nothing. Workers can do the same continuously:
``EngineConfig(retention=RetentionPolicy(...))``.
"""

from __future__ import annotations

import argparse

from outboxkit.admin.retention import PurgeResult, purge_route
from outboxkit.admin.selection import DEFAULT_BATCH_SIZE
from outboxkit.cli.common import EXIT_OK, UsageError
from outboxkit.cli.durations import parse_duration
from outboxkit.cli.options import add_output_arguments
from outboxkit.cli.output import format_age, help_text, print_json, print_table
from outboxkit.cli.targets import add_target_arguments, open_target, split_positionals
from outboxkit.messages import Status


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "purge",
        parents=parents,
        help="retention: delete consumed (and optionally dead) rows older than a period",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("words", nargs="*", metavar="APP", help="module:attribute of an Engine")
    add_target_arguments(parser)
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="delete consumed rows consumed longer ago than this (e.g. 7d)",
    )
    parser.add_argument(
        "--dead-older-than",
        type=parse_duration,
        metavar="DURATION",
        help="also delete dead rows that died longer ago than this (default: keep dead rows)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"rows deleted per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    add_output_arguments(parser)
    parser.set_defaults(func=run, extra_words="words")


def run(args: argparse.Namespace) -> int:
    app, _ = split_positionals(args.words, max_ids=0)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    target = open_target(args, app)
    try:
        plan = [(Status.CONSUMED, args.older_than)]
        if args.dead_older_than is not None:
            plan.append((Status.DEAD, args.dead_older_than))
        results: list[PurgeResult] = [
            purge_route(
                target.repository,
                route,
                status,
                older_than=seconds,
                batch_size=args.batch_size,
                dry_run=args.dry_run,
            )
            for route in target.routes
            for status, seconds in plan
        ]
    finally:
        target.close()
    if args.json:
        print_json({"source": target.source, "results": [r.to_dict() for r in results]})
        return EXIT_OK
    title = f"purge of {target.source}" + (" (dry run: nothing deleted)" if args.dry_run else "")
    print_table(
        ["service", "table", "status", "older than", "matched", "deleted"],
        [
            [r.service, r.table, r.status.value, format_age(r.older_than), r.matched, r.deleted]
            for r in results
        ],
        plain=args.plain,
        title=title,
    )
    return EXIT_OK
