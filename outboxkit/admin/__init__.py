"""Operating an outbox without SQL: status reports, the dead-letter queue, retention.

The same operations the ``outboxkit status``, ``dlq`` and ``purge`` commands run, as a
Python API on any :class:`~outboxkit.store.Repository`::

    from outboxkit.admin import DeadLetters, Selection, status_report

    for service in status_report(repository, routing.routes()):
        print(service.service, service.counts, service.dead)
    dlq = DeadLetters(repository, routing.route_of_service("orders"))
    dlq.requeue(Selection(error_contains="timeout"), dry_run=True)

Everything is safe while workers run: bulk changes go in bounded batches and change only
rows still in the status they expect.
"""

from outboxkit.admin.dead_letters import DeadLetters
from outboxkit.admin.retention import (
    DEFAULT_CONSUMED_RETENTION,
    DEFAULT_HOUSEKEEPING_INTERVAL,
    PurgeResult,
    RetentionPolicy,
    apply_retention,
    purge_route,
)
from outboxkit.admin.selection import DEFAULT_BATCH_SIZE, BulkResult, Selection
from outboxkit.admin.status import (
    DEFAULT_REDELIVERY_AFTER,
    ServiceStatus,
    retry_histogram,
    service_status,
    status_report,
)

__all__ = [
    # status
    "DEFAULT_REDELIVERY_AFTER",
    "ServiceStatus",
    "retry_histogram",
    "service_status",
    "status_report",
    # dead letters
    "DEFAULT_BATCH_SIZE",
    "BulkResult",
    "DeadLetters",
    "Selection",
    # retention
    "DEFAULT_CONSUMED_RETENTION",
    "DEFAULT_HOUSEKEEPING_INTERVAL",
    "PurgeResult",
    "RetentionPolicy",
    "apply_retention",
    "purge_route",
]
