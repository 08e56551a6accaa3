"""The dead-letter queue of one service: find, show, requeue and purge ``dead`` rows.

Bulk operations walk the table in bounded batches by id (never one statement over the
whole table) and each batch changes only rows that are *still* dead, so they are safe while
workers run: a row requeued by someone else meanwhile is skipped, not reset twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from outboxkit.admin.selection import DEFAULT_BATCH_SIZE, BulkResult, Selection
from outboxkit.errors import ConfigurationError
from outboxkit.messages import OutboxMessage, Status
from outboxkit.routing import Route
from outboxkit.store import AdminStore

logger = logging.getLogger(__name__)


class DeadLetters:
    """Operator actions on the ``dead`` rows of ``route``'s table."""

    def __init__(self, repository: AdminStore, route: Route) -> None:
        self.repository = repository
        self.route = route

    def find(
        self, selection: Selection | None = None, *, limit: int = 100, after_id: int = 0
    ) -> list[OutboxMessage]:
        """Up to ``limit`` dead rows matching ``selection`` with ``id > after_id``, by id."""
        row_filter = (selection or Selection()).row_filter(Status.DEAD)
        return self.repository.find_rows(self.route, row_filter, limit=limit, after_id=after_id)

    def count(self, selection: Selection | None = None) -> int:
        return self.repository.count_rows(
            self.route, (selection or Selection()).row_filter(Status.DEAD)
        )

    def get(self, outbox_id: int) -> OutboxMessage | None:
        """The row with this id whatever its status (a caller shows the status), or ``None``."""
        return self.repository.get(self.route, outbox_id)

    def requeue(
        self,
        selection: Selection,
        *,
        dry_run: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> BulkResult:
        """Send the matching dead rows back to ``pending``, due now, with a fresh retry budget."""
        result = self._walk(
            "requeue",
            selection,
            lambda ids: self.repository.requeue_rows(self.route, ids),
            dry_run=dry_run,
            batch_size=batch_size,
        )
        if result.changed:
            logger.info("requeued %d dead rows of %s", result.changed, self.route.table)
        return result

    def purge(
        self,
        selection: Selection,
        *,
        dry_run: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> BulkResult:
        """Delete the matching dead rows (they are gone for good: list or export them first)."""
        result = self._walk(
            "purge",
            selection,
            lambda ids: self.repository.delete_rows(self.route, ids, status=Status.DEAD),
            dry_run=dry_run,
            batch_size=batch_size,
        )
        if result.changed:
            logger.info("purged %d dead rows of %s", result.changed, self.route.table)
        return result

    def _walk(
        self,
        action: str,
        selection: Selection,
        apply: Callable[[Sequence[int]], set[int]],
        *,
        dry_run: bool,
        batch_size: int,
    ) -> BulkResult:
        if batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {batch_size}")
        row_filter = selection.row_filter(Status.DEAD)
        matched: set[int] = set()
        changed = 0
        after_id = 0
        while True:
            page = self.repository.find_rows(
                self.route, row_filter, limit=batch_size, after_id=after_id
            )
            if not page:
                break
            ids = [row.id for row in page]
            matched.update(ids)
            after_id = ids[-1]
            if not dry_run:
                changed += len(apply(ids))
        wanted = set(selection.ids) if selection.ids is not None else set()
        return BulkResult(
            service=self.route.service,
            action=action,
            matched=len(matched),
            changed=changed,
            dry_run=dry_run,
            not_matched=tuple(sorted(wanted - matched)),
        )
