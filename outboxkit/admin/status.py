"""The status report of a service's outbox: what is waiting, what is stuck, what died.

Built only from :class:`~outboxkit.store.Repository` reads, so it works from any
process that can reach the database (an operator's shell, a health probe) without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from outboxkit.messages import Status
from outboxkit.routing import Route
from outboxkit.store import AdminStore

#: Upper bounds (inclusive) of the retry histogram's buckets; the last bucket is open.
RETRY_BUCKETS = (0, 1, 2, 5, 10)
#: Redelivery time assumed when none is known: ``RelayConfig.republish_after``'s default.
DEFAULT_REDELIVERY_AFTER = 300.0


def retry_histogram(counts: Mapping[int, int]) -> dict[str, int]:
    """``retry_count -> rows`` folded into the labelled buckets of :data:`RETRY_BUCKETS`.

    Every bucket is present (0 when empty), so reports line up from one run to the next.
    """
    labels: list[tuple[str, int, int | None]] = []
    low = 0
    for high in RETRY_BUCKETS:
        labels.append((str(high) if low == high else f"{low}-{high}", low, high))
        low = high + 1
    labels.append((f"{low}+", low, None))
    histogram = {label: 0 for label, _, _ in labels}
    for retries, rows in counts.items():
        for label, lower, upper in labels:
            if retries >= lower and (upper is None or retries <= upper):
                histogram[label] += rows
                break
    return histogram


@attrs.frozen(kw_only=True)
class ServiceStatus:
    """One service's outbox at one moment (by the database clock)."""

    service: str
    table: str
    counts: Mapping[Status, int]
    #: Seconds since the oldest ``pending`` row was written; ``None`` when none is pending.
    oldest_pending_age: float | None
    #: Rows ``published`` longer ago than ``redelivery_after`` and still not consumed: the
    #: broker or a consumer lost them; the relay will publish them again.
    stuck_published: int
    redelivery_after: float
    #: Rows not yet final (``pending``/``published``) by how often they were retried.
    retries: Mapping[str, int]

    @property
    def dead(self) -> int:
        return self.counts.get(Status.DEAD, 0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (statuses by their stored names)."""
        return {
            "service": self.service,
            "table": self.table,
            "counts": {status.value: self.counts.get(status, 0) for status in Status},
            "dead": self.dead,
            "oldest_pending_age_seconds": self.oldest_pending_age,
            "stuck_published": self.stuck_published,
            "redelivery_after_seconds": self.redelivery_after,
            "retry_histogram": dict(self.retries),
        }


def service_status(
    repository: AdminStore, route: Route, *, redelivery_after: float = DEFAULT_REDELIVERY_AFTER
) -> ServiceStatus:
    """The :class:`ServiceStatus` of ``route``'s table."""
    return ServiceStatus(
        service=route.service,
        table=route.table,
        counts=repository.count_by_status(route),
        oldest_pending_age=repository.oldest_pending_age(route),
        stuck_published=repository.count_published_before(route, older_than=redelivery_after),
        redelivery_after=redelivery_after,
        retries=retry_histogram(repository.retry_counts(route)),
    )


def status_report(
    repository: AdminStore,
    routes: Iterable[Route],
    *,
    redelivery_after: float = DEFAULT_REDELIVERY_AFTER,
) -> list[ServiceStatus]:
    """:func:`service_status` of every route, in the order given."""
    return [service_status(repository, r, redelivery_after=redelivery_after) for r in routes]
