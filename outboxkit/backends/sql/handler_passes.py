"""Running a batch's transactional handlers in one database transaction.

The first pass runs the handlers without savepoints (two round trips saved per handler); if
one raises, that pass is rolled back and the batch is replayed with a savepoint around each
handler, the failed one not run again, so one failure rolls back only its own writes. A
replay can only call a handler again, never commit its writes twice. The outbox's
``consume_batch`` and the inbox's share this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from outboxkit.repository import ConsumeOutcome, ConsumeResult


class HandlerFailedError(Exception):
    """A handler raised during a pass without savepoints: replay the batch with them."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


def run_handler(
    conn: Connection,
    index: int,
    run: Callable[[Connection], Any],
    *,
    savepoints: bool,
    is_transient: Callable[[SQLAlchemyError], bool],
) -> ConsumeResult[Any]:
    """Run one handler; a failure either aborts the pass or rolls back its savepoint."""
    savepoint = conn.begin_nested() if savepoints else None
    try:
        value = run(conn)
    except Exception as exc:
        if isinstance(exc, SQLAlchemyError) and is_transient(exc):
            # A deadlock or a dead connection under the handler says nothing about the
            # event: the whole transaction runs again (or fails uncounted).
            raise
        if savepoint is None:
            raise HandlerFailedError(index, exc) from exc
        savepoint.rollback()
        return ConsumeResult(ConsumeOutcome.FAILED, error=exc)
    if savepoint is not None:
        savepoint.commit()
    return ConsumeResult(ConsumeOutcome.CONSUMED, value)


def run_in_passes(
    run_pass: Callable[[bool], list[ConsumeResult[Any]]],
    failed: dict[int, Exception],
    count: int,
) -> list[ConsumeResult[Any]]:
    """``run_pass(savepoints)`` (one transaction) until a pass completes.

    A :class:`HandlerFailedError` records the failure in ``failed`` (which the pass reads,
    so that handler is not run again) and replays the batch with savepoints.
    """
    savepoints = False
    while True:
        try:
            return run_pass(savepoints)
        except HandlerFailedError as failure:
            failed[failure.index] = failure.error
            if count == 1:
                return [ConsumeResult(ConsumeOutcome.FAILED, error=failure.error)]
            savepoints = True
