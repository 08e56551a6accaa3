"""The relay: move due outbox rows of one service to its topic.

One step (:meth:`Relay.run_once`) claims a batch with ``FOR UPDATE SKIP LOCKED`` and a
fencing lease, publishes it as one broker batch, then records the outcome per row:

* accepted by the broker -> ``published`` (only if still held under our lease);
* broker unreachable -> released untouched, due again after a pause; the attempt is **not**
  counted, so an outage never burns a row's retries;
* rejected by the broker -> one counted retry with backoff, ``dead`` when exhausted;
* rejected for good (:class:`~outboxkit.errors.PermanentRejectionError`: too large, an
  invalid topic, ...) -> ``dead`` at once with the broker's reason, as retrying the same
  message can only fail the same way;
* undecodable row -> ``dead`` with the reason.

**Overlap.** When a claim comes back full (a backlog), a helper thread claims the next
batch while this one is published, and a second one marks this one ``published`` while the
next is published: the database's claim, the database's mark and the broker's
acknowledgements overlap instead of adding up (they touch disjoint rows: a claimed batch is
under a lease, so the next claim never reads it). Rows of one key still reach the broker
in order (batch k is acknowledged before batch k+1 is sent). A ``run_once`` that returns
without holding a next claim has finished every mark; a prefetched claim that is not used
(the broker became unreachable, the relay stops) is released uncounted, and a background
mark that fails only means the rows are sent again when their lease runs out.

A relay killed mid-batch loses nothing: its rows become due again when the lease runs out.
Two relays never publish the same row in normal operation (disjoint claims); after a lease
expiry a duplicate publish is possible and harmless, because consumers are idempotent and a
stale lease can no longer mark the row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime, timezone

import attrs

from outboxkit.broker import Broker, BrokerMessage
from outboxkit.errors import (
    BrokerUnavailableError,
    DecodeError,
    MessageRejectedError,
    PermanentRejectionError,
)
from outboxkit.helper_thread import HelperThread
from outboxkit.messages import OutboxMessage, Outcome
from outboxkit.observability.logs import event_fields
from outboxkit.observability.observers import Observer, seconds_between
from outboxkit.observability.tracing import NO_TRACING, Tracing
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route
from outboxkit.store import Claim, RelayStore
from outboxkit.wire.envelope import utc_isoformat
from outboxkit.wire.row_encoding import encode_row

logger = logging.getLogger(__name__)


#: How the reason of a row that cannot be published starts (the Go relay's words), unless
#: it already says what failed ("failed to parse ...", "failed to serialize ...").
_SHELL_ERROR = "failed to parse outbox event shell"


@attrs.frozen(kw_only=True)
class RelayConfig:
    """Knobs of one relay thread."""

    #: Rows claimed and published per step.
    batch_size: int = attrs.field(default=200, validator=attrs.validators.gt(0))
    #: How long a claim protects rows from other relays; longer than a broker batch takes.
    lease_seconds: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: Longest pause when there was nothing to do (the Go scan interval was 1 s); a wake-up
    #: (a commit in this process, a PostgreSQL notification from another) ends it at once.
    idle_interval: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    #: First pause after an empty claim; doubles up to ``idle_interval`` while idle, so a
    #: busy relay without notifications (MySQL/MariaDB, SQLite) still picks rows up fast.
    min_poll_interval: float = attrs.field(default=0.01, validator=attrs.validators.ge(0))
    #: First and longest pause while the broker or database is unreachable.
    outage_backoff: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    outage_backoff_max: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: A row ``published`` this long ago and still not consumed is published again;
    #: ``None`` turns the rescue off.
    republish_after: float | None = 300.0
    #: How often the rescue sweep runs.
    republish_interval: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: Claim the next batch while this one is published, when this claim came back full.
    prefetch: bool = True


@attrs.frozen(kw_only=True)
class RelayStep:
    """What one :meth:`Relay.run_once` did."""

    claimed: int = 0
    #: Rows the broker accepted (some may have been consumed before being marked).
    published: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0


class Relay:
    """Publishes one service's due rows. One instance per relay thread."""

    def __init__(
        self,
        repository: RelayStore,
        broker: Broker,
        route: Route,
        *,
        config: RelayConfig | None = None,
        retry_policy: RetryPolicy | None = None,
        tracing: Tracing = NO_TRACING,
        observer: Observer | None = None,
    ) -> None:
        self.repository = repository
        #: Told about each published, retried and dead row (metrics); no-op by default.
        self.observer = observer or Observer()
        self.broker = broker
        self.route = route
        self.config = config or RelayConfig()
        self.retry_policy = retry_policy or RetryPolicy()
        self.tracing = tracing
        self._claimer: HelperThread | None = None
        self._marker: HelperThread | None = None
        self._next_claim: Future[tuple[Claim, float]] | None = None
        self._pending_marks: list[Future[None]] = []

    def run_once(self) -> RelayStep:
        """Claim, publish and record one batch.

        Raises :class:`~outboxkit.errors.BrokerUnavailableError` (after giving the rows back
        uncounted) when the broker could not be reached, so the caller can pause.
        """
        claim = self._take_claim()
        if not claim.messages:
            self._finish_marks()
            return RelayStep()
        if self.config.prefetch and len(claim.messages) >= self.config.batch_size:
            self._start_prefetch()
        try:
            step = self._publish_claim(claim)
        except BaseException:
            # The caller pauses now: rows claimed for later must not wait out their lease.
            self._release_prefetched(delay=self.config.outage_backoff)
            self._finish_marks()
            raise
        if self._next_claim is None:
            self._finish_marks()
        return step

    def close(self) -> None:
        """Finish pending marks, give back a prefetched claim, stop the helper threads."""
        self._release_prefetched(delay=0.0)
        self._finish_marks()
        for helper in (self._claimer, self._marker):
            if helper is not None:
                helper.shutdown()
        self._claimer = self._marker = None

    def _claim_due(self) -> tuple[Claim, float]:
        """A claim and the monotonic time it was made (its lease runs from then)."""
        claimed_at = time.monotonic()
        claim = self.repository.claim_due(
            self.route, limit=self.config.batch_size, lease_seconds=self.config.lease_seconds
        )
        return claim, claimed_at

    def _take_claim(self) -> Claim:
        """The prefetched claim if there is one (its error, if it failed), else a new one.

        A prefetched claim's lease started when it was claimed, while the batch before it
        was still being sent: one that has used up half its lease is given back and
        claimed again, so a slow broker never lets the lease run out under a batch that
        is being sent (another relay would then send it too).
        """
        pending, self._next_claim = self._next_claim, None
        if pending is not None:
            claim, claimed_at = pending.result()
            if time.monotonic() - claimed_at < self.config.lease_seconds / 2:
                return claim
            if claim.messages:
                ids = [row.id for row in claim.messages]
                self.repository.release(self.route, ids, token=claim.token, delay=0.0)
        return self._claim_due()[0]

    def _claiming_thread(self) -> HelperThread:
        """The thread that claims the next batch ahead (on its own connection)."""
        if self._claimer is None:
            self._claimer = HelperThread(f"outboxkit-relay-claim-{self.route.service}")
        return self._claimer

    def _marking_thread(self) -> HelperThread:
        """The thread that marks sent batches ``published``, in the order they were sent."""
        if self._marker is None:
            self._marker = HelperThread(f"outboxkit-relay-mark-{self.route.service}")
        return self._marker

    def _start_prefetch(self) -> None:
        self._next_claim = self._claiming_thread().submit(self._claim_due)

    def _release_prefetched(self, *, delay: float) -> None:
        pending, self._next_claim = self._next_claim, None
        if pending is None:
            return
        try:
            claim, _ = pending.result()
            if claim.messages:
                ids = [row.id for row in claim.messages]
                self.repository.release(self.route, ids, token=claim.token, delay=delay)
        except Exception as exc:  # the lease runs out instead: nothing is lost
            logger.debug("could not release the prefetched claim of %s: %s", self.route.table, exc)

    def _mark_published(self, sent: list[int], token: str, *, background: bool) -> None:
        try:
            published = self.repository.mark_published(self.route, sent, token=token)
        except Exception as exc:
            if not background:
                raise
            # Nothing is lost: the rows stay pending under a lease and are sent again when it
            # runs out (a duplicate the consumers absorb). The next claim meets the outage.
            logger.warning(
                "could not mark %d sent rows of %s published (sent again after their lease): %s",
                len(sent),
                self.route.table,
                exc,
            )
            return
        if len(published) != len(sent):
            # Consumed, retried or re-claimed meanwhile: the guard kept the newer state.
            logger.debug(
                "%d of %d sent rows of %s had moved on before mark_published",
                len(sent) - len(published),
                len(sent),
                self.route.table,
            )

    def _finish_marks(self) -> None:
        """Wait for the marks running on the marking thread (they log their own failures)."""
        pending, self._pending_marks = self._pending_marks, []
        for future in pending:
            future.result()

    def _encode_claim(self, claim: Claim) -> tuple[list[tuple[int, BrokerMessage]], int]:
        """The claimed rows as broker messages; an undecodable row goes dead (counted)."""
        published_at = utc_isoformat(datetime.now(timezone.utc))
        to_send: list[tuple[int, BrokerMessage]] = []
        dead = 0
        for row in claim.messages:
            try:
                message = encode_row(row, published_at=published_at)
            except DecodeError as exc:
                reason = exc.reason
                if not reason.startswith("failed to "):
                    reason = f"{_SHELL_ERROR}: {reason}"
                if self.repository.mark_dead(self.route, row.id, reason=reason):
                    dead += 1
                    self.observer.dead(self.route.service, row.event_type)
                self._log_event(logging.ERROR, row, f"undecodable, marked dead: {exc.reason}")
                continue
            to_send.append((row.id, message))
        return to_send, dead

    def _publish_claim(self, claim: Claim) -> RelayStep:
        """Publish one claimed batch and record each row's outcome."""
        to_send, dead = self._encode_claim(claim)
        if not to_send:
            return RelayStep(claimed=len(claim.messages), dead=dead)

        try:
            messages = [message for _, message in to_send]
            with self.tracing.sending(self.route, messages):
                results = self.broker.publish(messages)
        except Exception:
            # Unreachable broker, or a bug: either way nothing is known to be wrong with
            # the rows, so give them back uncounted now rather than when the lease ends.
            ids = [row_id for row_id, _ in to_send]
            self.repository.release(
                self.route, ids, token=claim.token, delay=self.config.outage_backoff
            )
            raise

        rows = {row.id: row for row in claim.messages}
        sent: list[int] = []
        unavailable: list[int] = []
        rejected: list[tuple[int, MessageRejectedError | Exception]] = []
        for (row_id, _), result in zip(to_send, results, strict=True):
            if result.error is None:
                sent.append(row_id)
            elif isinstance(result.error, BrokerUnavailableError):
                unavailable.append(row_id)
            else:
                rejected.append((row_id, result.error))
        self._observe_published(claim.messages, sent)

        if logger.isEnabledFor(logging.DEBUG):
            for row_id in sent:
                self._log_event(logging.DEBUG, rows[row_id], "published")
        if self._next_claim is not None:
            # A backlog: record this batch on the marking thread while the next one is sent.
            # The previous batch's mark had this batch's send to finish; waiting for it
            # keeps at most one mark behind, so a database slower to mark than the broker
            # to acknowledge slows the relay down instead of queueing marks until sent
            # rows outlive their lease (and another relay sends them again).
            self._finish_marks()
            self._pending_marks.append(
                self._marking_thread().submit(
                    self._mark_published, sent, claim.token, background=True
                )
            )
        else:
            self._mark_published(sent, claim.token, background=False)
        retried = 0
        for row_id, error in rejected:
            if isinstance(error, PermanentRejectionError):
                dead += self._mark_refused(rows[row_id], error)
                continue
            outcome = self.repository.schedule_retry(
                self.route,
                row_id,
                reason=f"broker rejected the message: {error}",
                backoff=self.retry_policy.delay,
                token=claim.token,
            )
            self._observe_retry(outcome, claim.messages, row_id)
            if outcome is Outcome.DEAD:
                dead += 1
                self._log_event(logging.ERROR, rows[row_id], f"dead: {error}")
            elif outcome is Outcome.RETRY:
                retried += 1
                self._log_event(
                    logging.WARNING,
                    rows[row_id],
                    f"rejected by the broker, retry scheduled: {error}",
                )
        step = RelayStep(
            claimed=len(claim.messages),
            published=len(sent),
            retried=retried,
            dead=dead,
            released=len(unavailable),
        )
        if unavailable:
            self.repository.release(
                self.route, unavailable, token=claim.token, delay=self.config.outage_backoff
            )
            raise BrokerUnavailableError(
                f"broker unreachable for {len(unavailable)} messages of {self.route.topic}; "
                f"{step.published} published in the same batch"
            )
        return step

    def _mark_refused(self, row: OutboxMessage, error: PermanentRejectionError) -> int:
        """Mark a row the broker refused for good ``dead`` with the reason; 1 if it was."""
        reason = f"broker refused the message for good: {error}"
        if not self.repository.mark_dead(self.route, row.id, reason=reason, event_id=row.event_id):
            return 0  # moved on meanwhile (a lease that ran out): its new owner decides
        self.observer.dead(self.route.service, row.event_type)
        self._log_event(logging.ERROR, row, f"refused by the broker for good, dead: {error}")
        return 1

    def _log_event(self, level: int, row: OutboxMessage, what: str) -> None:
        """One line about one row, naming event id, type, service and topic (also as extras)."""
        logger.log(
            level,
            "event %s (%s) of service %s, outbox row %s, topic %s: %s",
            row.event_id,
            row.event_type,
            self.route.service,
            row.id,
            row.topic,
            what,
            extra=event_fields(
                event_id=row.event_id,
                event_type=row.event_type,
                service=self.route.service,
                topic=row.topic,
                outbox_id=row.id,
            ),
        )

    def _observe_published(self, rows: Sequence[OutboxMessage], sent: Sequence[int]) -> None:
        """Tell the observer about the acknowledged rows, timed row creation -> now (the ack)."""
        acked_at = datetime.now(timezone.utc)
        ids = set(sent)
        for row in rows:
            if row.id in ids:
                latency = seconds_between(row.created_at, acked_at)
                self.observer.published(
                    self.route.service, row.event_type, commit_to_publish=latency
                )

    def _observe_retry(self, outcome: Outcome, rows: Sequence[OutboxMessage], row_id: int) -> None:
        event_type = next(r.event_type for r in rows if r.id == row_id)
        if outcome is Outcome.DEAD:
            self.observer.dead(self.route.service, event_type)
        elif outcome is Outcome.RETRY:
            self.observer.retried(self.route.service, event_type)

    def republish_stale(self) -> int:
        """Send ``published``-but-never-consumed rows back to pending (bounded by max_retry).

        Routes consumed through an inbox too: their consumers' receipts mark the rows (see
        :mod:`outboxkit.inbox.receipts`), so a row still ``published`` lost its event or its
        receipt, and publishing it again is what recovers either.
        """
        if self.config.republish_after is None:
            return 0
        count = self.repository.republish_stale(
            self.route, older_than=self.config.republish_after, limit=self.config.batch_size
        )
        if count:  # the repository logged which rows, at WARNING
            logger.debug(
                "%d rows of %s were published over %.0f s ago and never consumed: republishing",
                count,
                self.route.table,
                self.config.republish_after,
            )
        return count
