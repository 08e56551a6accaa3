"""Retention: delete ``consumed`` (and, if asked, ``dead``) rows older than a period.

An outbox table only grows otherwise. Deletion runs in bounded batches by id and is
guarded by status, so it is safe while workers run: a final row is never touched by a
worker again, and a dead row requeued meanwhile is not deleted. Ages are judged by the
database clock against ``updated_at``: when the row was consumed, or when it died.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import attrs

from outboxkit.admin.selection import DEFAULT_BATCH_SIZE
from outboxkit.messages import Status
from outboxkit.routing import Route
from outboxkit.store import AdminStore, RowFilter

logger = logging.getLogger(__name__)

#: Default time a consumed row is kept (for audits and replays by hand): seven days.
DEFAULT_CONSUMED_RETENTION = 7 * 24 * 3600.0
#: How often the engine's housekeeping thread runs retention by default.
DEFAULT_HOUSEKEEPING_INTERVAL = 300.0


def _positive_or_none(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0 seconds or None, got {value!r}")


@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """How long final rows are kept, and how the purge pages through a table."""

    #: Seconds a ``consumed`` row is kept; ``None`` keeps them forever.
    consumed_after: float | None = attrs.field(
        default=DEFAULT_CONSUMED_RETENTION, validator=_positive_or_none
    )
    #: Seconds a ``dead`` row is kept; ``None`` (the default) keeps dead rows until an
    #: operator requeues or purges them: they are evidence, not garbage.
    dead_after: float | None = attrs.field(default=None, validator=_positive_or_none)
    #: Rows deleted per transaction.
    batch_size: int = attrs.field(default=DEFAULT_BATCH_SIZE, validator=attrs.validators.ge(1))
    #: Seconds between runs of the engine's housekeeping thread.
    interval: float = attrs.field(
        default=DEFAULT_HOUSEKEEPING_INTERVAL, validator=attrs.validators.gt(0)
    )

    def statuses(self) -> list[tuple[Status, float]]:
        """``(status, seconds kept)`` for each status this policy purges."""
        kept = [(Status.CONSUMED, self.consumed_after), (Status.DEAD, self.dead_after)]
        return [(status, seconds) for status, seconds in kept if seconds is not None]


@attrs.frozen(kw_only=True)
class PurgeResult:
    """Rows of one service and status older than the retention period: matched, deleted."""

    service: str
    table: str
    status: Status
    older_than: float
    matched: int
    deleted: int
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "table": self.table,
            "status": self.status.value,
            "older_than_seconds": self.older_than,
            "matched": self.matched,
            "deleted": self.deleted,
            "dry_run": self.dry_run,
        }


def purge_route(
    repository: AdminStore,
    route: Route,
    status: Status,
    *,
    older_than: float,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> PurgeResult:
    """Delete ``route``'s rows in ``status`` unchanged for more than ``older_than`` seconds.

    ``should_stop`` (a callable) is asked between batches, so a stopping engine does not
    wait for a long purge to finish.
    """
    cutoff = repository.now() - timedelta(seconds=older_than)
    row_filter = RowFilter(status=status, changed_before=cutoff)
    matched = deleted = 0
    after_id = 0
    while should_stop is None or not should_stop():
        page = repository.find_rows(route, row_filter, limit=batch_size, after_id=after_id)
        if not page:
            break
        ids = [row.id for row in page]
        matched += len(ids)
        after_id = ids[-1]
        if not dry_run:
            deleted += len(repository.delete_rows(route, ids, status=status, changed_before=cutoff))
    if deleted:
        logger.info(
            "retention: deleted %d %s rows of %s older than %.0f s",
            deleted,
            status.value,
            route.table,
            older_than,
        )
    return PurgeResult(
        service=route.service,
        table=route.table,
        status=status,
        older_than=older_than,
        matched=matched,
        deleted=deleted,
        dry_run=dry_run,
    )


def apply_retention(
    repository: AdminStore,
    routes: Iterable[Route],
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[PurgeResult]:
    """:func:`purge_route` for every route and every status ``policy`` purges."""
    results: list[PurgeResult] = []
    for route in routes:
        for status, seconds in policy.statuses():
            results.append(
                purge_route(
                    repository,
                    route,
                    status,
                    older_than=seconds,
                    batch_size=policy.batch_size,
                    dry_run=dry_run,
                    should_stop=should_stop,
                )
            )
    return results
