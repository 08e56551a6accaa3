"""SQL storage of the outbox: one repository, three database dialects.

* :class:`~outboxkit.backends.sql.SqlRepository`: the
  :class:`~outboxkit.repository.Repository` for PostgreSQL, MySQL/MariaDB and SQLite.
* :func:`~outboxkit.backends.sqlite.create_sqlite_engine`: a SQLite engine set up so
  concurrent threads wait for the write lock instead of failing.
"""

from outboxkit.backends.sql import SqlRepository
from outboxkit.backends.sqlite import create_sqlite_engine

__all__ = ["SqlRepository", "create_sqlite_engine"]
