"""The Repository: every storage role over one set of outbox tables.

The roles (:mod:`outboxkit.store.roles`) are what each stage depends on; a repository
implements all of them, so one object can be handed to an engine. ``SqlRepository``
(``outboxkit.backends``) is the implementation on PostgreSQL, MySQL/MariaDB and SQLite.
"""

from __future__ import annotations

from typing import Any

from outboxkit.store.roles import (
    AdminStore,
    ConsumeStore,
    OutboxWriter,
    RelayStore,
    SchemaStore,
)


class Repository(OutboxWriter, RelayStore, ConsumeStore, AdminStore, SchemaStore):
    """Storage of outbox rows, one table per :class:`~outboxkit.routing.Route`: every role
    of :mod:`outboxkit.store.roles`."""

    def close(self) -> None:
        """Release pooled connections this repository created itself."""

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the CLI (dialect, server version); override to add more."""
        return {"repository": type(self).__name__}
