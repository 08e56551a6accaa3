"""Printing outbox rows: one page as a table or JSON, and one row in full."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from outboxkit.cli.output import (
    Fit,
    format_time,
    iso,
    one_line,
    print_json,
    print_table,
)
from outboxkit.messages import OutboxMessage
from outboxkit.routing import Route


def row_dict(row: OutboxMessage, *, with_payload: bool) -> dict[str, object]:
    """Every column of ``row`` for JSON; with ``with_payload`` the decoded event shell too."""
    document: dict[str, object] = {
        "id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "service": row.service_name,
        "topic": row.topic,
        "message_key": row.message_key,
        "status": row.status.value,
        "retry_count": row.retry_count,
        "max_retry": row.max_retry,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "published_at": iso(row.published_at),
        "consumed_at": iso(row.consumed_at),
        "next_retry_at": iso(row.next_retry_at),
    }
    if with_payload:
        try:
            document["payload"] = json.loads(row.payload)
        except ValueError:
            document["payload"] = row.payload
    return document


def print_rows(
    args: argparse.Namespace,
    route: Route,
    rows: Sequence[OutboxMessage],
    *,
    what: str,
    changed: str,
) -> None:
    """One page of rows (``args.limit`` long when more may follow) as a table or JSON.

    ``what`` names the rows in the title ("dead"), ``changed`` the column of their last
    change ("died").
    """
    more = len(rows) == args.limit
    if args.json:
        print_json(
            {
                "service": route.service,
                "table": route.table,
                "rows": [row_dict(r, with_payload=False) for r in rows],
                "next_after": rows[-1].id if more else None,
            }
        )
        return
    print_table(
        ["id", "event id", "type", "key", "retries", "created", changed, "last error"],
        [
            [
                r.id,
                r.event_id or "-",
                r.event_type,
                r.message_key or "-",
                f"{r.retry_count}/{r.max_retry}",
                format_time(r.created_at),
                format_time(r.updated_at),
                one_line(r.last_error) or "-",
            ]
            for r in rows
        ],
        plain=args.plain,
        title=f"{what} rows of {route.table} (service {route.service})",
        # On a narrow terminal: the ids stay whole, the error text and type give way first.
        fit=Fit(shrink=("last error", "type", "key"), drop=("created", "retries", "key", changed)),
    )
    if more:
        print(f"more rows may follow: --after {rows[-1].id}", file=sys.stderr)
    elif not rows:
        print(f"no {what} rows match", file=sys.stderr)
