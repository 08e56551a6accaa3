"""Storage of the outbox: the roles each stage needs, the values they exchange, and the
:class:`Repository` that is all of them.

``outboxkit.backends`` implements the repository on PostgreSQL, MySQL/MariaDB and SQLite;
``outboxkit.testing.repository_contract`` checks any implementation against these docstrings.
"""

from outboxkit.store.repository import Repository
from outboxkit.store.roles import (
    AdminStore,
    ConsumeStore,
    FailureMarks,
    NewRowListener,
    OutboxWriter,
    RelayStore,
    RowReads,
    SchemaStore,
)
from outboxkit.store.values import (
    MAX_LAST_ERROR,
    RESCUE_DOUBLINGS,
    UNSTORABLE,
    AddResult,
    Claim,
    ConsumeItem,
    ConsumeResult,
    HousekeepingLock,
    NewMessage,
    RowFilter,
    rescue_wait,
    storable,
    truncate_error,
)

__all__ = [
    # the roles and the whole
    "Repository",
    "OutboxWriter",
    "RelayStore",
    "ConsumeStore",
    "FailureMarks",
    "RowReads",
    "AdminStore",
    "SchemaStore",
    "NewRowListener",
    # values
    "AddResult",
    "Claim",
    "ConsumeItem",
    "ConsumeResult",
    "HousekeepingLock",
    "NewMessage",
    "RowFilter",
    "MAX_LAST_ERROR",
    "RESCUE_DOUBLINGS",
    "UNSTORABLE",
    "rescue_wait",
    "storable",
    "truncate_error",
]
