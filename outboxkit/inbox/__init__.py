"""The inbox: exactly once in effect for consumers whose handlers write to another database.

* :class:`Inbox` (the contract) and :class:`SqlInbox` (PostgreSQL, MySQL/MariaDB, SQLite);
* :func:`inbox_table` to put the table on your own ``MetaData`` (Alembic);
* :class:`~outboxkit.inbox.ledger.InboxLedger`, where the consumer an
  :class:`~outboxkit.Engine` runs for a service configured with ``inbox=True`` records
  outcomes (see ``docs/inbox.md``).
"""

from outboxkit.errors import RedeliveryRequested
from outboxkit.inbox.base import DEFAULT_MAX_ATTEMPTS, Inbox, InboxItem, InboxRecord, InboxStatus
from outboxkit.inbox.schema import DEFAULT_INBOX_TABLE, inbox_table
from outboxkit.inbox.sql import SqlInbox

__all__ = [
    "DEFAULT_INBOX_TABLE",
    "DEFAULT_MAX_ATTEMPTS",
    "Inbox",
    "InboxItem",
    "InboxRecord",
    "InboxStatus",
    "RedeliveryRequested",
    "SqlInbox",
    "inbox_table",
]
