"""SQL storage of the outbox: one repository, three database dialects.

* :class:`~outboxkit.backends.sql.SqlRepository`: the
  :class:`~outboxkit.store.Repository` for PostgreSQL, MySQL/MariaDB and SQLite.
* :func:`~outboxkit.backends.sqlite.create_sqlite_engine`: a SQLite engine set up so
  concurrent threads wait for the write lock instead of failing.
* :func:`~outboxkit.backends.urls.database_url`: a database URL as platforms give it
  (``postgres://``), checked, in one line when it is wrong.
"""

from outboxkit.backends.sql import SqlRepository
from outboxkit.backends.sqlite import create_sqlite_engine
from outboxkit.backends.urls import database_url

__all__ = ["SqlRepository", "create_sqlite_engine", "database_url"]
