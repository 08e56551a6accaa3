"""What a transactional handler may not do to the transaction it runs in, checked every run.

A transactional handler runs on the connection of the consume transaction, and its writes
must commit with its ``consumed`` mark or not at all. It sees that connection in the same
state in every case (a batch's first pass, the replay after a batch-mate failed, a single
event, an inbox consumer, inline handling): a plain transaction, no savepoint of ours in
view. Four ways a handler could still break the promise are checked around each run, by
:class:`HandlerScope`:

* **Committing.** ``connection.commit()`` would commit the batch's earlier writes without
  their marks: it is refused while a handler runs (the call raises
  :class:`~outboxkit.errors.HandlerTransactionError`), and when the handler returns the
  connection is discarded, so that nothing of the transaction commits.
* **Rolling back.** ``connection.rollback()``, or ``Session.rollback()`` of an ORM session
  joined to the connection (which rolls the connection's transaction back, as does a failed
  ``flush()``), ends the transaction under the batch.
* **Leaving a SAVEPOINT open** (a ``begin_nested()`` never committed or rolled back).
* **Dropping ORM changes.** A :class:`~sqlalchemy.orm.Session` bound to the handler's
  connection that is closed with changes it never flushed (``add()`` with no ``flush()`` or
  ``commit()``), or still holds such changes when the handler returns, would lose them
  while the row is marked consumed. Listeners on the ``Session`` class, installed once when
  the first handler runs, notice it; they act only for a session bound to the connection of
  a handler running in the same thread, and do nothing for any other session. A delete
  that was never flushed from a session already closed is the one case the ORM reports no
  event for.

A handler that did any of these fails its attempt with a
:class:`~outboxkit.errors.HandlerTransactionError` that says what it did, and its writes are
rolled back with the rest of the pass.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, NestedTransaction, Transaction
from sqlalchemy.orm import Session

from outboxkit.errors import HandlerTransactionError

#: The handler running in this thread (context), if any.
_current: contextvars.ContextVar[HandlerScope | None] = contextvars.ContextVar(
    "outboxkit_handler_scope", default=None
)

_ENDED = (
    "the handler ended the transaction it runs in ({how}); its writes and those of the "
    "handlers before it in the batch are rolled back. Return normally to commit with the "
    "consumed mark, raise to roll back"
)


class HandlerScope:
    """One run of one transactional handler on ``connection``.

    Use as a context manager around the call, then ask :meth:`problem`.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._transaction: Transaction | None = connection.get_transaction()
        self._nested: NestedTransaction | None = connection.get_nested_transaction()
        #: Set when the handler tried to commit: the connection must be discarded, since
        #: the database transaction is still open with everything written so far.
        self.commit_refused = False
        self._discarded: list[str] = []
        #: Sessions bound to the connection that the handler used, held until the check
        #: (a session the handler never closed may be garbage-collected on return).
        self._sessions: dict[int, Session] = {}
        self._token: contextvars.Token[HandlerScope | None] | None = None

    def __enter__(self) -> HandlerScope:
        _install_session_listeners()
        _refuse_commits_on(self.connection)
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None
        if self.commit_refused:
            # The database transaction is still open with everything written in it so far,
            # and none of that may commit: discard the connection (the server rolls back).
            self.connection.invalidate()

    @property
    def ended(self) -> bool:
        """Whether the transaction the handler started in is over (committed or rolled
        back), so that there is no savepoint left to roll back to."""
        if self.commit_refused:
            return True
        if self._transaction is None:
            return False
        current = self.connection.get_transaction()
        return current is not self._transaction or not current.is_active

    def problem(self) -> HandlerTransactionError | None:
        """What the handler did that its writes cannot survive, or ``None``."""
        connection = self.connection
        if self.commit_refused:
            return HandlerTransactionError(_ENDED.format(how="it called commit()"))
        if self.ended:
            how = "a rollback() on its connection or on an ORM session joined to it"
            return HandlerTransactionError(_ENDED.format(how=how))
        if connection.get_nested_transaction() is not self._nested:
            return HandlerTransactionError(
                "the handler left a SAVEPOINT open (begin_nested() without commit() or "
                "rollback(), or an ORM session with an open nested transaction); its writes "
                "are rolled back"
            )
        unflushed = self._discarded + [
            f"{_describe_pending(session)} in a Session still open"
            for session in self._sessions.values()
            if session.new or session.deleted or session.dirty
        ]
        if unflushed:
            return HandlerTransactionError(
                "a Session bound to the handler's connection dropped changes it never "
                f"flushed ({'; '.join(unflushed[:3])}); they would be lost while the event "
                "is marked consumed. Call session.flush() (or commit()) before the session "
                "closes, or declare the handler's second parameter as `session: Session`, "
                "which outboxkit binds to the transaction and flushes"
            )
        return None

    def _note_session(self, session: Session) -> None:
        self._sessions[id(session)] = session

    def _note_discarded(self, what: str) -> None:
        self._discarded.append(what)


def _describe_pending(session: Session) -> str:
    parts = []
    if session.new:
        parts.append(f"{len(session.new)} new")
    if session.dirty:
        parts.append(f"{len(session.dirty)} changed")
    if session.deleted:
        parts.append(f"{len(session.deleted)} deleted")
    return ", ".join(parts) + " object(s)"


def _scope_of(session: Session) -> HandlerScope | None:
    """The running handler's scope when ``session`` is bound to its connection."""
    scope = _current.get()
    if scope is None or session.bind is not scope.connection:
        return None
    return scope


# --------------------------------------------------------------------- commit refusal

_guarded_lock = threading.Lock()
_guarded: weakref.WeakSet[Connection] = weakref.WeakSet()


def _refuse_commits_on(connection: Connection) -> None:
    """Listen for commits of ``connection`` (once per connection object)."""
    if connection in _guarded:  # the usual case, every handler of a batch after the first
        return
    with _guarded_lock:
        if connection in _guarded:
            return
        _guarded.add(connection)
    sa_event.listen(connection, "commit", _refuse_commit)


def _refuse_commit(connection: Connection) -> None:
    scope = _current.get()
    if scope is not None and scope.connection is connection:
        scope.commit_refused = True
        raise HandlerTransactionError(
            "a handler must not call commit() on the transaction it runs in: its writes "
            "commit with the consumed mark when it returns"
        )


# --------------------------------------------------------------------- ORM listeners

_installed_lock = threading.Lock()
_installed = threading.Event()


def _install_session_listeners() -> None:
    """Listen on the ``Session`` class, once per process."""
    if _installed.is_set():
        return
    with _installed_lock:
        if _installed.is_set():
            return
        sa_event.listen(Session, "transient_to_pending", _on_pending)
        sa_event.listen(Session, "after_begin", _on_begin)
        sa_event.listen(Session, "pending_to_transient", _on_pending_dropped)
        sa_event.listen(Session, "persistent_to_detached", _on_detached)
        _installed.set()


def _on_pending(session: Session, instance: Any) -> None:
    scope = _scope_of(session)
    if scope is not None:
        scope._note_session(session)


def _on_begin(session: Session, transaction: Any, connection: Connection) -> None:
    scope = _scope_of(session)
    if scope is not None:
        scope._note_session(session)


def _on_pending_dropped(session: Session, instance: Any) -> None:
    scope = _scope_of(session)
    if scope is not None:
        scope._note_discarded(f"a new {type(instance).__name__} never flushed")


def _on_detached(session: Session, instance: Any) -> None:
    scope = _scope_of(session)
    if scope is not None and sa.inspect(instance).modified:
        scope._note_discarded(f"changes to a {type(instance).__name__} never flushed")
