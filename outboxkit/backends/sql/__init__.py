"""The SQL repository: every statement written once with SQLAlchemy Core.

One module per role of :mod:`outboxkit.store`: :mod:`~outboxkit.backends.sql.writer`
(inserts in the caller's transaction), :mod:`~outboxkit.backends.sql.relay_store` (claims and
marks), :mod:`~outboxkit.backends.sql.consume_store` (consume and final marks, with
:mod:`~outboxkit.backends.sql.handler_passes` running a batch's handlers),
:mod:`~outboxkit.backends.sql.admin_store` (listings, counts, guarded bulk requeue and delete,
status figures, the housekeeping lock) and :mod:`~outboxkit.backends.sql.schema_store`
(create, check and upgrade tables); :mod:`~outboxkit.backends.sql.store` holds what they share
(engine, dialect, tables, clock, guarded updates) and
:mod:`~outboxkit.backends.sql.repository` combines them into :class:`SqlRepository`.

Whatever differs between PostgreSQL, MySQL/MariaDB and SQLite comes from the
:class:`~outboxkit.backends.dialect.Dialect` value picked for the engine; the remaining
capability questions SQLAlchemy already answers (``UPDATE ... RETURNING``) are asked of the
engine's dialect. The contract is :class:`outboxkit.store.Repository`; the notes below
are how it is met.

* **Clock.** Every "now" is the dialect's SQL expression, evaluated by the server. When a
  later time is needed (a lease, a retry), the server's now is read in the same transaction
  (usually as a column of the locking ``SELECT``) and the delay added in Python, so no
  interval arithmetic differs by dialect and the app clock is never used.
* **Claims** are one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` of the due rows,
  then one ``UPDATE ... WHERE id IN`` giving them a fresh lease token.
* **Guarded updates** name the expected state in their ``WHERE`` clause; when a batch's
  changed ids are needed they come from ``RETURNING`` or, without it (MySQL), from a
  ``SELECT ... FOR UPDATE`` of the matching rows in the same transaction followed by the
  ``UPDATE`` of exactly those, so the answer is right under concurrency.
* **Errors.** Driver errors become :class:`~outboxkit.errors.RepositoryError` (schema
  errors :class:`~outboxkit.errors.SchemaError`) with the cause chained; only the callback
  of :meth:`SqlRepository.consume` may raise through unchanged.
"""

from outboxkit.backends.sql.repository import SqlRepository

__all__ = ["SqlRepository"]
