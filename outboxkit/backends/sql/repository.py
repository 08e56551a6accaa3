"""The SQL repository: the role modules of this package combined into one Repository."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from outboxkit.backends.sql.admin_store import SqlAdminStore
from outboxkit.backends.sql.consume_store import SqlConsumeStore
from outboxkit.backends.sql.relay_store import SqlRelayStore
from outboxkit.backends.sql.schema_store import SqlSchemaStore
from outboxkit.backends.sql.writer import SqlOutboxWriter
from outboxkit.backends.urls import database_url
from outboxkit.errors import ConfigurationError
from outboxkit.store import Repository


class SqlRepository(
    SqlOutboxWriter, SqlRelayStore, SqlConsumeStore, SqlAdminStore, SqlSchemaStore, Repository
):
    """:class:`~outboxkit.store.Repository` on PostgreSQL 9.5+, MySQL 8.0.1+ /
    MariaDB 10.6+ or SQLite 3.35+ (one relay at a time), through a SQLAlchemy engine.

    Thread-safe: it holds the engine (a pool), never a connection. The server version is
    checked on first use and an unsupported server raises
    :class:`~outboxkit.errors.UnsupportedDatabaseError`. ``owns_engine=True`` makes
    :meth:`close` dispose the engine; an engine passed in by the application is left alone.
    """

    @classmethod
    def from_url(cls, url: str | sa.URL, **engine_kwargs: Any) -> SqlRepository:
        """A repository on a new engine for ``url``, disposed by :meth:`close`.

        The URL is read by :func:`outboxkit.backends.database_url`: ``postgres://`` (the form
        platforms put in ``DATABASE_URL``) means PostgreSQL through psycopg2, and an unknown
        scheme or a missing driver is a one-line :class:`ConfigurationError` that does not
        show the password. SQLite URLs get
        :func:`~outboxkit.backends.sqlite.create_sqlite_engine`; others
        :func:`sqlalchemy.create_engine` with ``pool_pre_ping`` on unless given. Both get
        ``hide_parameters=True`` unless given, so no payload reaches an error message.
        """
        parsed = database_url(url)
        engine_kwargs.setdefault("hide_parameters", True)
        try:
            if parsed.get_backend_name() == "sqlite":
                from outboxkit.backends.sqlite import create_sqlite_engine

                engine = create_sqlite_engine(parsed, **engine_kwargs)
            else:
                engine_kwargs.setdefault("pool_pre_ping", True)
                engine = sa.create_engine(parsed, **engine_kwargs)
        except ImportError as exc:
            shown = parsed.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"no database driver for {shown!r} ({exc}): install it, or name one that "
                "is installed (postgresql+psycopg2://, mysql+pymysql://)"
            ) from exc
        return cls(engine, owns_engine=True)

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        facts.update(self.dialect.describe())
        facts["server_version"] = self._server_version
        facts["url"] = self.safe_url
        return facts
