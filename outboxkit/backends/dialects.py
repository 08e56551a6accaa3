"""Which :class:`~outboxkit.backends.dialect.Dialect` serves which database: a table.

The three dialect values import the ``Dialect`` class; this module imports them, so the
class never has to know its instances (adding a database is a module with its value and a
line here).
"""

from __future__ import annotations

import sqlalchemy as sa

from outboxkit.backends.dialect import Dialect
from outboxkit.backends.mysql import MYSQL
from outboxkit.backends.postgres import POSTGRESQL
from outboxkit.backends.sqlite import SQLITE
from outboxkit.errors import UnsupportedDatabaseError

#: SQLAlchemy's dialect name -> ours.
DIALECTS: dict[str, Dialect] = {
    "postgresql": POSTGRESQL,
    "mysql": MYSQL,
    "mariadb": MYSQL,
    "sqlite": SQLITE,
}


def dialect_for(engine: sa.Engine) -> Dialect:
    """The :class:`Dialect` for ``engine``, chosen by SQLAlchemy's dialect name."""
    dialect = DIALECTS.get(engine.dialect.name)
    if dialect is None:
        raise UnsupportedDatabaseError(
            f"database {engine.dialect.name!r} is not supported: use PostgreSQL, "
            "MySQL/MariaDB or SQLite"
        )
    return dialect
