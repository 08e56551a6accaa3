"""Running a batch's transactional handlers in one database transaction.

The first pass runs the handlers with no savepoint (two round trips saved per handler); if
one raises, that pass is rolled back and the batch is replayed with a savepoint around each
handler, the failed one not run again, so one failure rolls back only its own writes. A
replay can only call a handler again, never commit its writes twice. The outbox's
``consume_batch`` and the inbox's share this.

**One shape for the handler.** The replay's savepoints are plain ``SAVEPOINT`` statements,
which SQLAlchemy's own bookkeeping does not see: the handler finds its connection in the
same state in either pass, a transaction with no nested transaction. That matters to ORM
code: a ``Session(bind=connection)`` joins a connection inside a ``begin_nested()`` by
taking a savepoint of its own, which its ``close()`` rolls back, so a handler that only
flushed lost its writes whenever a batch-mate failed, while its row was marked consumed.
Around every run, :class:`~outboxkit.consume.handler_scope.HandlerScope` checks what a handler must
not do to the transaction (commit it, roll it back, leave a savepoint open, drop ORM
changes); doing so fails the attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from outboxkit.consume.handler_scope import HandlerScope
from outboxkit.messages import Outcome
from outboxkit.store import ConsumeResult


class HandlerFailedError(Exception):
    """A handler failed in a way only a new pass can undo: replay the batch without it.

    Raised when a handler fails during a pass without savepoints, or when it ended the
    transaction itself (there is nothing left to roll back to).
    """

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
    savepoint = f"outboxkit_handler_{index}"
    if savepoints:
        conn.exec_driver_sql(f"SAVEPOINT {savepoint}")
    scope = HandlerScope(conn)
    error: Exception | None = None
    value: Any = None
    try:
        with scope:
            value = run(conn)
    except Exception as exc:
        if isinstance(exc, SQLAlchemyError) and is_transient(exc) and not scope.commit_refused:
            # A deadlock or a dead connection under the handler says nothing about the
            # event: the whole transaction runs again (or fails uncounted).
            raise
        error = exc
    if scope.commit_refused:  # whatever the handler raised after, this is what it did
        error = scope.problem()
    error = error or scope.problem()
    if error is None:
        if savepoints:
            conn.exec_driver_sql(f"RELEASE SAVEPOINT {savepoint}")
        return ConsumeResult(Outcome.CONSUMED, value)
    if scope.ended or not savepoints:
        raise HandlerFailedError(index, error) from error
    conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {savepoint}")
    conn.exec_driver_sql(f"RELEASE SAVEPOINT {savepoint}")
    return ConsumeResult(Outcome.FAILED, error=error)


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
                return [ConsumeResult(Outcome.FAILED, error=failure.error)]
            savepoints = True
