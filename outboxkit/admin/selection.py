"""Which rows an operator means, and what a bulk operation did with them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from outboxkit.messages import Status
from outboxkit.store import RowFilter

#: Rows changed per statement by bulk operations: small enough that each transaction holds
#: its row locks briefly while workers run, large enough to be quick.
DEFAULT_BATCH_SIZE = 500


def _ids(value: Iterable[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


def _strings(value: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(value or ())


@attrs.frozen(kw_only=True)
class Selection:
    """Rows of one table picked by id, event type, key, error text and time window.

    The status is not part of it: each operation applies its own (``dead`` for the
    dead-letter queue). Times are naive UTC by the database clock and compare with the
    moment the row last changed (when it died, for a dead row).
    """

    ids: tuple[int, ...] | None = attrs.field(default=None, converter=_ids)
    event_types: tuple[str, ...] = attrs.field(factory=tuple, converter=_strings)
    message_key: str | None = None
    error_contains: str | None = None
    changed_after: datetime | None = None
    changed_before: datetime | None = None

    def row_filter(self, status: Status) -> RowFilter:
        return RowFilter(
            status=status,
            ids=self.ids,
            event_types=self.event_types,
            message_key=self.message_key,
            error_contains=self.error_contains,
            changed_after=self.changed_after,
            changed_before=self.changed_before,
        )

    @property
    def is_everything(self) -> bool:
        """Whether no criterion narrows it (an operation on *all* rows of the status)."""
        return self == Selection()


@attrs.frozen(kw_only=True)
class BulkResult:
    """What a bulk operation matched and changed; ``dry_run`` results change nothing.

    ``not_matched`` lists ids the caller named that were not among the rows matched (no
    such row, or not in the status), so "requeue 999" can say so instead of "0".
    """

    service: str
    action: str
    matched: int
    changed: int
    dry_run: bool
    not_matched: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "action": self.action,
            "matched": self.matched,
            "changed": self.changed,
            "dry_run": self.dry_run,
            "not_matched": list(self.not_matched),
        }
