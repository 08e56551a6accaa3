"""Where a consumer records what happened to each event: the one seam between the consume
loop and its storage.

The loop (:mod:`outboxkit.consume.consumer`) receives, decodes, routes and runs handlers the
same way for every service; a :class:`Ledger` decides where the outcome lands:

* :class:`~outboxkit.consume.outbox_ledger.OutboxLedger`: on the producer's outbox row, in
  the same database (the Go design). A failed attempt goes back to ``pending`` and the relay
  sends it again, so the delivery is acknowledged.
* :class:`~outboxkit.inbox.ledger.InboxLedger`: in an inbox table of the consumer's own
  database. A failed attempt is counted there and the broker delivers it again
  (:attr:`Ledger.redelivers`), so it and the deliveries after it stay unacknowledged; the
  producer learns final outcomes from receipts.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from outboxkit.broker import Delivery
from outboxkit.errors import DecodeError, PermanentError
from outboxkit.messages import Event, Outcome
from outboxkit.observability.logs import scrub_error
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route
from outboxkit.store import ConsumeResult

#: One transactional handler bound to its event: called with the consume transaction's
#: connection.
Run = Callable[[Connection], Any]


class Ledger(abc.ABC):
    """Records the outcome of each event of one service (one instance per consumer)."""

    #: Whether a failed attempt is delivered again by the broker (the delivery and those
    #: after it stay unacknowledged, :attr:`redelivery_delay` later) rather than sent again
    #: by the relay from the database (everything handled is acknowledged).
    redelivers: bool = False

    def __init__(self, route: Route, retry_policy: RetryPolicy | None = None) -> None:
        self.route = route
        self.retry_policy = retry_policy or RetryPolicy()
        #: With :attr:`redelivers`: how long to wait before the broker delivers the batch's
        #: failed attempt again (set by :meth:`retry`).
        self.redelivery_delay = 0.0

    # ------------------------------------------------------------------ handlers

    @abc.abstractmethod
    def consume(
        self,
        runs: Sequence[tuple[Event, Run]],
        should_stop: Callable[[], bool] | None,
    ) -> list[ConsumeResult[Any]]:
        """Run a batch's transactional handlers, in order, in one transaction that also
        records each successful event consumed; one result per event (``CONSUMED``,
        ``DUPLICATE``, ``FAILED``, ``NOT_RUN``, and for the outbox ``MISSING`` and
        ``MISMATCH``). Raises :class:`~outboxkit.errors.RepositoryError` when nothing could
        be recorded."""

    @abc.abstractmethod
    def before_side_effect(self, event: Event) -> Outcome | None:
        """``None`` when a side-effect handler may run for ``event``, else the outcome that
        says why not (``DUPLICATE``, ``MISSING``, ``MISMATCH``)."""

    @abc.abstractmethod
    def mark_consumed(self, event: Event) -> bool:
        """Record ``event`` consumed after its side effect; ``False`` if it was final."""

    @abc.abstractmethod
    def retry(self, event: Event, error: BaseException) -> Outcome:
        """Count a failed attempt: ``RETRY``, ``DEAD`` when attempts ran out, ``DUPLICATE``
        when the event was final meanwhile. Logs it."""

    @abc.abstractmethod
    def dead(self, event: Event, reason: str, *, exc: BaseException | None = None) -> Outcome:
        """Record ``event`` dead with ``reason``: ``DEAD``, or ``DUPLICATE`` if it was final
        already. Logs it."""

    @abc.abstractmethod
    def undecodable(self, delivery: Delivery, exc: DecodeError) -> Outcome:
        """A message that does not decode: what is recorded (if anything) and logged."""

    # ------------------------------------------------------------------ hooks

    def settle(self, event: Event, result: ConsumeResult[Any]) -> Outcome:
        """Turn a handler's result into a recorded outcome: ``PermanentError`` makes the
        event dead, any other exception a retry.

        The handler's exception is scrubbed first, in place
        (:func:`~outboxkit.observability.logs.scrub_error`), so no value of its SQL reaches
        what every ledger makes of it: the ``last_error`` it records, its log lines and
        their traceback, a receipt."""
        outcome = result.outcome
        if outcome is Outcome.FAILED:
            error = result.error
            assert error is not None
            scrub_error(error)
            if isinstance(error, PermanentError):
                return self.dead(event, f"permanent failure: {error}", exc=error)
            return self.retry(event, error)
        if outcome is Outcome.MISSING:
            return self.missing(event)
        if outcome is Outcome.MISMATCH:
            return self.mismatch(event)
        return outcome  # CONSUMED, DUPLICATE

    def missing(self, event: Event) -> Outcome:
        """The event's record does not exist where it should (the outbox row)."""
        return Outcome.SKIPPED

    def mismatch(self, event: Event) -> Outcome:
        """The event's record holds another event."""
        return Outcome.SKIPPED

    def begin_batch(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Before a received batch is handled."""

    def finished(self, event: Event, outcome: Outcome) -> None:  # noqa: B027 - optional hook
        """After ``event``'s outcome is recorded (receipts are collected here)."""

    def end_batch(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """After the handled deliveries are acknowledged (receipts are sent here)."""
