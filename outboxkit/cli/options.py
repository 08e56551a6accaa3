"""Options shared by the operator commands: output format and dead-letter filters."""

from __future__ import annotations

import argparse

from outboxkit.admin.selection import Selection
from outboxkit.cli.durations import parse_moment, resolve_moment
from outboxkit.store import Repository


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print JSON instead of a table")
    group.add_argument(
        "--plain", action="store_true", help="plain-text table even when rich is installed"
    )


def add_filter_arguments(parser: argparse.ArgumentParser, *, changed: str = "died") -> None:
    """``--event-type``, ``--key``, ``--error``, ``--since`` and ``--until``; ``changed``
    says what the time window is about (the row's last change)."""
    group = parser.add_argument_group("which rows (all given must match)")
    group.add_argument("--event-type", action="append", default=[], help="event type (repeatable)")
    group.add_argument("--key", help="exact message key")
    group.add_argument("--error", help="text contained in the last error")
    group.add_argument(
        "--since",
        type=parse_moment,
        metavar="WHEN",
        help=f"{changed} at or after WHEN: a duration ago (30m, 2h, 7d) or an ISO timestamp (UTC)",
    )
    group.add_argument(
        "--until", type=parse_moment, metavar="WHEN", help=f"{changed} before WHEN (as --since)"
    )


def selection_from(
    args: argparse.Namespace, repository: Repository, ids: list[int] | None
) -> Selection:
    """The :class:`Selection` the filters and ids describe; durations by the database clock."""
    needs_clock = args.since is not None or args.until is not None
    now = repository.now() if needs_clock else None
    return Selection(
        ids=ids or None,
        event_types=args.event_type,
        message_key=args.key,
        error_contains=args.error,
        changed_after=resolve_moment(args.since, now) if now is not None else None,
        changed_before=resolve_moment(args.until, now) if now is not None else None,
    )
