"""``outboxkit dlq ACTION`` (alias ``dead``): the dead-letter queue of one service.

Actions: ``count``, ``list``, ``show ID``, ``requeue [ID...]``, ``purge [ID...]``. APP and
ids may come in any order around the action (``dlq requeue APP 7 9 --service orders`` and
the older ``dead APP requeue --service orders 7`` both work).

Requeue and purge act on the ids given, else on the rows the filters match; with neither
they need ``--all``. Without ids they ask for confirmation at a terminal, or need ``--yes``.
They walk the table in batches of ``--batch-size`` rows and change only rows still dead,
so they are safe while workers run. ``--dry-run`` says what would change and changes
nothing. An id that matched no dead row is reported and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from outboxkit.admin.dead_letters import DeadLetters
from outboxkit.admin.selection import DEFAULT_BATCH_SIZE, BulkResult, Selection
from outboxkit.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    CommandFailedError,
    UsageError,
)
from outboxkit.cli.listing import print_rows, row_dict
from outboxkit.cli.options import (
    add_filter_arguments,
    add_output_arguments,
    selection_from,
)
from outboxkit.cli.output import (
    help_text,
    print_json,
    shown,
)
from outboxkit.cli.targets import add_target_arguments, open_target, split_positionals

ACTIONS = ("count", "list", "show", "requeue", "purge")
#: Rows per page of ``dlq list`` by default.
DEFAULT_LIST_LIMIT = 50


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "dlq",
        aliases=["dead"],
        parents=parents,
        help="count, list, show, requeue or purge the dead events of a service",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "words",
        nargs="+",
        metavar="ACTION|APP|ID",
        help=f"one action ({', '.join(ACTIONS)}), optionally APP (module:attribute) and ids",
    )
    add_target_arguments(parser)
    add_filter_arguments(parser)
    paging = parser.add_argument_group("list")
    paging.add_argument(
        "--limit", type=int, default=DEFAULT_LIST_LIMIT, help="rows per page (list)"
    )
    paging.add_argument("--after", type=int, default=0, help="only ids above this (list)")
    bulk = parser.add_argument_group("requeue and purge")
    bulk.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    bulk.add_argument("--all", action="store_true", help="every dead row of the service")
    bulk.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    bulk.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"rows changed per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    add_output_arguments(parser)
    parser.set_defaults(func=run, extra_words="words")


def run(args: argparse.Namespace) -> int:
    actions = [w for w in args.words if w in ACTIONS]
    if len(actions) != 1:
        raise UsageError(f"name one action: {', '.join(ACTIONS)}")
    action = actions[0]
    words = list(args.words)
    words.remove(action)
    app, ids = split_positionals(words, max_ids=None)
    if action in ("count", "list") and ids:
        raise UsageError(f"{action} takes no ids (use --after to page)")
    if action == "show" and len(ids) != 1:
        raise UsageError("show needs exactly one outbox id")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    target = open_target(args, app)
    try:
        dlq = DeadLetters(target.repository, target.single_route())
        if action == "count":
            return _count(args, dlq, selection_from(args, target.repository, None))
        if action == "list":
            return _list(args, dlq, selection_from(args, target.repository, None))
        if action == "show":
            return _show(args, dlq, ids[0])
        return _bulk(args, dlq, action, selection_from(args, target.repository, ids))
    finally:
        target.close()


def _count(args: argparse.Namespace, dlq: DeadLetters, selection: Selection) -> int:
    n = dlq.count(selection)
    if args.json:
        print_json({"service": dlq.route.service, "table": dlq.route.table, "dead": n})
    else:
        print(f"{n} dead rows in {dlq.route.table} (service {dlq.route.service})")
    return EXIT_OK


def _list(args: argparse.Namespace, dlq: DeadLetters, selection: Selection) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    rows = dlq.find(selection, limit=args.limit, after_id=args.after)
    print_rows(args, dlq.route, rows, what="dead", changed="died")
    return EXIT_OK


def _show(args: argparse.Namespace, dlq: DeadLetters, outbox_id: int) -> int:
    row = dlq.get(outbox_id)
    if row is None:
        raise CommandFailedError(f"no row with id {outbox_id} in {dlq.route.table}")
    document = row_dict(row, with_payload=True)
    if args.json:
        print_json(document)
        return EXIT_OK
    width = max(len(k) for k in document)
    for key, value in document.items():
        if key == "payload":
            text = json.dumps(value, indent=2) if not isinstance(value, str) else value
            print(f"{key.ljust(width)}  {shown(text, newlines=True)}")
        else:
            print(f"{key.ljust(width)}  {'-' if value is None else shown(value)}")
    return EXIT_OK


def _bulk(args: argparse.Namespace, dlq: DeadLetters, action: str, selection: Selection) -> int:
    if selection.is_everything and not args.all:
        raise UsageError(
            f"{action} needs outbox ids, a filter (--event-type, --key, --error, --since, "
            "--until) or --all"
        )
    if selection.ids is None and not args.dry_run and not args.yes:
        _confirm(action, dlq, selection)
    operation = dlq.requeue if action == "requeue" else dlq.purge
    result = operation(selection, dry_run=args.dry_run, batch_size=args.batch_size)
    _report(args, dlq, result)
    if result.not_matched:
        ids = ", ".join(str(i) for i in result.not_matched)
        print(f"outboxkit: error: no dead row with id {ids} in {dlq.route.table}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _confirm(action: str, dlq: DeadLetters, selection: Selection) -> None:
    if not sys.stdin.isatty():
        raise UsageError(
            f"{action} without ids changes many rows: add --yes to confirm "
            "(or --dry-run to see how many)"
        )
    n = dlq.count(selection)
    answer = input(f"{action} {n} dead rows of {dlq.route.table}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandFailedError(f"{action} cancelled; nothing changed")


def _report(args: argparse.Namespace, dlq: DeadLetters, result: BulkResult) -> None:
    if args.json:
        print_json({**result.to_dict(), "table": dlq.route.table})
        return
    past = {"requeue": "requeued", "purge": "purged"}[result.action]
    if result.dry_run:
        print(
            f"dry run: would {result.action} {result.matched} dead rows of {dlq.route.table} "
            f"(service {dlq.route.service}); nothing changed"
        )
    else:
        print(
            f"{past} {result.changed} of {result.matched} matching dead rows of "
            f"{dlq.route.table} (service {dlq.route.service})"
        )
