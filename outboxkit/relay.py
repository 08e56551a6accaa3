"""The relay: move due outbox rows of one service to its topic.

One step (:meth:`Relay.run_once`) claims a batch with ``FOR UPDATE SKIP LOCKED`` and a
fencing lease, publishes it as one broker batch, then records the outcome per row:

* accepted by the broker -> ``published`` (only if still held under our lease);
* broker unreachable -> released untouched, due again after a pause; the attempt is **not**
  counted, so an outage never burns a row's retries;
* rejected by the broker -> one counted retry with backoff, ``dead`` when exhausted;
* undecodable row -> ``dead`` with the reason.

A relay killed mid-batch loses nothing: its rows become due again when the lease runs out.
Two relays never publish the same row in normal operation (disjoint claims); after a lease
expiry a duplicate publish is possible and harmless, because consumers are idempotent and a
stale lease can no longer mark the row.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import attrs

from outboxkit.broker import Broker, BrokerMessage
from outboxkit.codec import broker_headers, encode_envelope, envelope_from_row
from outboxkit.errors import BrokerUnavailableError, DecodeError, MessageRejectedError
from outboxkit.repository import Repository, RetryOutcome
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route
from outboxkit.tracing import NO_TRACING, Tracing

logger = logging.getLogger(__name__)


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
        repository: Repository,
        broker: Broker,
        route: Route,
        *,
        config: RelayConfig | None = None,
        retry_policy: RetryPolicy | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.repository = repository
        self.broker = broker
        self.route = route
        self.config = config or RelayConfig()
        self.retry_policy = retry_policy or RetryPolicy()
        self.tracing = tracing

    def run_once(self) -> RelayStep:
        """Claim, publish and record one batch.

        Raises :class:`~outboxkit.errors.BrokerUnavailableError` (after giving the rows back
        uncounted) when the broker could not be reached, so the caller can pause.
        """
        claim = self.repository.claim_due(
            self.route, limit=self.config.batch_size, lease_seconds=self.config.lease_seconds
        )
        if not claim.messages:
            return RelayStep()
        now = datetime.now(timezone.utc)
        to_send: list[tuple[int, BrokerMessage]] = []
        dead = 0
        for row in claim.messages:
            try:
                envelope = envelope_from_row(row, published_at=now)
            except DecodeError as exc:
                reason = f"failed to parse outbox event shell: {exc.reason}"
                if self.repository.mark_dead(self.route, row.id, reason=reason):
                    dead += 1
                logger.error(
                    "outbox row %s of %s is undecodable, marked dead: %s",
                    row.id,
                    self.route.table,
                    exc.reason,
                )
                continue
            message = BrokerMessage(
                topic=row.topic,
                key=row.message_key,
                value=encode_envelope(envelope),
                headers=broker_headers(envelope),
            )
            to_send.append((row.id, message))
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

        published = self.repository.mark_published(self.route, sent, token=claim.token)
        if len(published) != len(sent):
            # Consumed, retried or re-claimed meanwhile: the guard kept the newer state.
            logger.debug(
                "%d of %d sent rows of %s had moved on before mark_published",
                len(sent) - len(published),
                len(sent),
                self.route.table,
            )
        retried = 0
        for row_id, error in rejected:
            outcome = self.repository.schedule_retry(
                self.route,
                row_id,
                reason=f"broker rejected the message: {error}",
                backoff=self.retry_policy.delay,
                token=claim.token,
            )
            if outcome is RetryOutcome.DEAD:
                dead += 1
                logger.error("outbox row %s of %s dead: %s", row_id, self.route.table, error)
            elif outcome is RetryOutcome.SCHEDULED:
                retried += 1
                logger.warning(
                    "outbox row %s of %s rejected by the broker, retry scheduled: %s",
                    row_id,
                    self.route.table,
                    error,
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
        if count:
            logger.warning(
                "%d rows of %s were published over %.0f s ago and never consumed: republishing",
                count,
                self.route.table,
                self.config.republish_after,
            )
        return count
