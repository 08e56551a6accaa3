"""Loud errors for the ways a publish call is most easily got wrong.

Each of these used to fail late or not at all: a ``sqlalchemy.Engine`` passed as
``connection=`` raised ``AttributeError`` deep in the insert; a forgotten ``connection=``
silently wrote the row in a transaction of its own (losing the outbox guarantee); an event
id published again with another payload silently kept the first payload.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.errors import PayloadConflictError
from outboxkit.routing import Route
from outboxkit.store import AddResult, NewMessage

logger = logging.getLogger(__name__)

_PASS = (
    "pass the Connection of your open transaction (`with db.begin() as conn: "
    "publish(..., connection=conn)`) or an ORM Session"
)


def check_executor(connection: object, *, required: bool) -> None:
    """Raise ``TypeError`` unless ``connection`` is a ``Connection``, a ``Session`` or
    (when not ``required``) ``None``."""
    if connection is None:
        if required:
            raise TypeError(
                "publish() without connection= is refused (PublisherConfig("
                f"require_connection=True)): {_PASS}"
            )
        return
    if isinstance(connection, (Connection, Session)):
        return
    if isinstance(connection, sa.Engine):
        raise TypeError(
            "publish(connection=...) got a sqlalchemy Engine, which has no transaction to "
            f"join: {_PASS}"
        )
    raise TypeError(f"publish(connection=...) got {type(connection).__qualname__}: {_PASS}")


def payload_digest(shell_text: str) -> str | None:
    """SHA-256 of the event shell's type and payload in canonical JSON, or ``None`` when the
    text is not a shell (a Go row may hold anything)."""
    try:
        shell = json.loads(shell_text)
    except ValueError:
        return None
    if not isinstance(shell, dict):
        return None
    canonical: Any = [shell.get("event_type"), shell.get("payload")]
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def report_conflicts(
    route: Route, messages: Sequence[NewMessage], results: Sequence[AddResult], mode: str
) -> None:
    """Warn (or raise :class:`PayloadConflictError`) for each known event id whose stored
    payload differs from the one just published. Only duplicates are looked at, and the
    repository read their payload in the statement that found them."""
    if mode == "ignore":
        return
    new_payload = {m.event_id: m.payload for m in messages}
    for result in results:
        if result.created or result.existing_payload is None:
            continue
        report_conflict(
            route.table,
            result.event_id,
            result.existing_payload,
            new_payload.get(result.event_id, ""),
            mode,
        )


def report_conflict(table: str, event_id: str, kept: str, dropped: str, mode: str) -> None:
    """Compare two event shells of one event id; warn or raise when their payloads differ."""
    if mode == "ignore":
        return
    theirs, ours = payload_digest(kept), payload_digest(dropped)
    if ours is None or theirs is None or ours == theirs:
        return
    text = (
        f"event {event_id} was published again with a different payload "
        f"(stored sha256 {theirs[:16]}, new sha256 {ours[:16]}) in {table}: the "
        "stored payload is kept"
    )
    if mode == "error":
        raise PayloadConflictError(text)
    logger.warning("%s", text)
