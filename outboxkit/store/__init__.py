"""Stage 1 to 4's storage: the contract every read and state change of the outbox meets.

:class:`~outboxkit.store.repository.Repository` is the contract; ``outboxkit.backends``
implements it on PostgreSQL, MySQL/MariaDB and SQLite, and
``outboxkit.testing.repository_contract`` checks any implementation against it.
"""

from outboxkit.store.repository import Repository

__all__ = ["Repository"]
