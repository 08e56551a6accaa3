"""Database engines whose connections the connection-killer can find, and only those.

The databases are shared with other engineers, so "terminate connections from the server
side" must hit this run's connections only. PostgreSQL: every connection carries the run's
``application_name``, and ``pg_terminate_backend`` targets that name. MariaDB runs without
``performance_schema`` here, so connect attributes are not queryable: every new connection
appends its ``CONNECTION_ID()`` to a file of the run's work directory, and the killer kills
only ids listed there that are still in the process list.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event


def connection_ids_file(workdir: str) -> Path:
    return Path(workdir) / f"conns-{os.getpid()}.log"


def tagged_engine(url: str, *, application_name: str, workdir: str | None) -> sa.Engine:
    """An engine whose every connection is recognisable as the run's (see module doc)."""
    if url.startswith("postgresql"):
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"application_name": application_name},
        )
    engine = sa.create_engine(
        url, pool_pre_ping=True, connect_args={"program_name": application_name}
    )
    if workdir is not None:
        path = connection_ids_file(workdir)

        @sa_event.listens_for(engine, "connect")
        def record_connection_id(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT CONNECTION_ID()")
                (connection_id,) = cursor.fetchone()
            finally:
                cursor.close()
            dbapi_connection.rollback()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, f"{connection_id}\n".encode())
            finally:
                os.close(fd)

    return engine


def recorded_connection_ids(workdir: str) -> set[int]:
    """Every MariaDB connection id the run's processes recorded."""
    ids: set[int] = set()
    for path in Path(workdir).glob("conns-*.log"):
        ids.update(int(line) for line in path.read_text().split() if line.isdigit())
    return ids
