"""Cross-process wake-ups on PostgreSQL: ``LISTEN`` for the ``pg_notify`` publishers send.

A publisher's insert notifies :data:`~outboxkit.backends.postgres.NOTIFY_CHANNEL` with the
table name, inside the caller's transaction, so the notification is delivered exactly when
the rows become visible (and never for a rollback). The listener holds one dedicated
connection outside the pool, in autocommit, and waits on its socket.
"""

from __future__ import annotations

import logging
import select
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from outboxkit.backends.postgres import NOTIFY_CHANNEL
from outboxkit.errors import RepositoryError
from outboxkit.store import NewRowListener

logger = logging.getLogger(__name__)


class PostgresListener(NewRowListener):
    """``LISTEN outboxkit_new_rows`` on a connection of its own (psycopg2)."""

    def __init__(self, engine: sa.Engine) -> None:
        try:
            proxied = engine.raw_connection()
            proxied.detach()  # ours for good: never handed back to the pool
            connection: Any = proxied.dbapi_connection
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except (SQLAlchemyError, OSError, AttributeError) as exc:
            raise RepositoryError(f"cannot LISTEN for new outbox rows: {exc}") from exc
        except Exception as exc:  # psycopg2.Error is not a SQLAlchemy error here
            raise RepositoryError(f"cannot LISTEN for new outbox rows: {exc}") from exc
        self._connection = connection
        self._closed = False

    def wait(self, timeout: float) -> set[str]:
        if self._closed:
            return set()
        try:
            readable, _, _ = select.select([self._connection], [], [], max(timeout, 0.0))
            if readable:
                self._connection.poll()
            tables = {note.payload for note in self._connection.notifies}
            self._connection.notifies.clear()
        except Exception as exc:
            raise RepositoryError(f"listening for new outbox rows failed: {exc}") from exc
        return tables

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._connection.close()
        except Exception as exc:
            logger.debug("closing the LISTEN connection failed: %s", exc)
