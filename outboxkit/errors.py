"""The one exception tree of outboxkit.

Every error the library raises is an :class:`OutboxError`. Driver errors (SQLAlchemy,
kafka-python, redis-py) are translated at the boundary and chained with ``from exc`` so the
cause is never lost, while callers only need to catch our types. Every exception a caller
can meet is defined here; what stays elsewhere is private to one module (a replay signal of
the SQL consume pass, an inbox write conflict, the CLI's exit-code signals) or belongs to the
test kit (``outboxkit.testing``: a service that cannot be started or reached).
"""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every error raised by outboxkit."""


class ConfigurationError(OutboxError):
    """The library was set up in a way that cannot work (bad name, duplicate route, ...)."""


class InvalidNameError(ConfigurationError):
    """A table, topic, group or service name failed validation.

    Names end up in SQL and broker commands, so only checked names are ever used.
    """


class RoutingError(OutboxError):
    """An event type has no route, or was routed to two services."""


class UnknownEventTypeError(RoutingError):
    """No service is registered for this event type."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"outbox route not registered: event_type={event_type!r}")
        self.event_type = event_type


class InvalidEventError(OutboxError):
    """A publish request was rejected before anything was written.

    Raised for an empty or over-long event type or key, a payload that is not
    JSON-serialisable, or a payload over the configured size limit.
    """


class UnsupportedDatabaseError(ConfigurationError):
    """The database server lacks what the outbox needs (e.g. ``SKIP LOCKED``)."""


class RepositoryError(OutboxError):
    """A storage operation failed (connection lost, statement rejected, ...)."""


class SchemaError(RepositoryError):
    """Creating or validating the outbox schema failed."""


class FatalError(OutboxError):
    """No retry can help: the setup is wrong and a person must fix it.

    Raised for a refused password, an unknown database, a missing outbox table, a topic
    that does not exist (with topic creation turned off) or an operation the credentials
    may not perform. The engine's threads stop on it instead of backing off for ever, the
    engine reports it as :attr:`~outboxkit.engine.Engine.fatal_error`, and ``outboxkit
    worker`` exits non-zero. Every fatal error is also a :class:`RepositoryError` or a
    :class:`BrokerError`, so code that catches those keeps working.
    """


class DatabaseSetupError(RepositoryError, FatalError):
    """The database refused us for a reason only configuration can fix.

    Authentication failed, the database or the outbox table does not exist, or the user
    lacks a privilege. See ``Dialect.is_fatal`` for the exact server errors.
    """


class BrokerError(OutboxError):
    """Base class of broker failures."""


class BrokerUnavailableError(BrokerError):
    """The broker could not be reached, or did not answer in time.

    Nothing about the message itself is known to be wrong: the relay pauses and retries
    without counting the attempt against the row's ``retry_count``.
    """


class ConnectInterruptedError(BrokerUnavailableError):
    """Connecting was given up because the broker was interrupted or closed."""


class BootstrapRefusedError(BrokerUnavailableError):
    """No bootstrap server accepts TCP connections (each refused or did not resolve)."""


class BrokerSetupError(BrokerError, FatalError):
    """The broker refused our setup: credentials, permissions, or a missing topic.

    Raised when the engine prepares a topic (``ensure_topic``) and the broker refuses the
    credentials or the permission, or when the topic does not exist and creating topics
    is turned off (``KafkaConfig(create_topics=False)``).
    """


class MessageRejectedError(BrokerError):
    """The broker refused this particular message (too large, invalid topic, ...).

    This is a message-specific failure and counts against the row's ``retry_count``.
    """


class PermanentRejectionError(MessageRejectedError):
    """The broker refused this message for a reason no retry of it can fix.

    Too large for the producer or the broker, a topic name the broker calls invalid, a
    record it calls invalid or corrupt: sending the same bytes again fails the same way.
    The relay marks the row ``dead`` at once with this reason instead of retrying it until
    ``max_retry`` (fix the cause, then requeue it: ``outboxkit dlq requeue``). Each broker
    decides which of its errors are permanent (see its ``errors`` module).
    """


class BrokerClosedError(BrokerError):
    """The broker or subscription was used after :meth:`close`."""


class DecodeError(OutboxError):
    """A message on the wire could not be decoded into an envelope (or a receipt).

    Carries the identifiers that could be read and passed their checks, so the caller can
    still mark the outbox row dead when it is identifiable; ``reason`` describes the fault
    without quoting the message.
    """

    def __init__(
        self,
        reason: str,
        *,
        outbox_id: int | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
        service_name: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outbox_id = outbox_id
        self.event_id = event_id
        self.event_type = event_type
        self.service_name = service_name


class PayloadDecodeError(DecodeError):
    """A payload could not be decoded into the payload type its event type declares.

    Decoding is deterministic, so the consumer marks such an event ``dead`` at once with
    this message as the reason (no retries). ``path`` names the offending field
    (``payload.items[0].price``).
    """

    def __init__(self, reason: str, *, path: str = "payload") -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path


class HandlerError(OutboxError):
    """Base class for errors a handler raises to steer the engine."""


class PermanentError(HandlerError):
    """Raise from a handler when retrying can never succeed.

    The engine rolls back the handler's transaction and marks the event ``dead`` with this
    error's message as ``last_error``.
    """


class HandlerTransactionError(HandlerError):
    """A transactional handler did what its writes cannot survive: it committed or rolled
    back the transaction it runs in, left a SAVEPOINT open, or let an ORM session bound to
    its connection drop changes it never flushed (see :mod:`outboxkit.consume.handler_scope`).

    The attempt fails like any other handler exception (a retry, ``dead`` after
    ``max_retry``) and the handler's writes are rolled back, so an event is never
    ``consumed`` without them.
    """


class DuplicateHandlerError(ConfigurationError):
    """A second handler was registered for an event type."""


class PayloadConflictError(InvalidEventError):
    """An event id was published again with a different payload.

    Raised only with ``PublisherConfig(on_payload_conflict="error")``; the stored payload is
    the one that counts, so the second publish would otherwise be silently lost.
    """


class RedeliveryRequested(Exception):  # noqa: N818 - a signal, not an error
    """Raised by an inbox consumer step: leave the rest unacknowledged, resubscribe later.

    An inbox consumer cannot schedule a retry on the producer's row (it is in another
    database), so a failed attempt is retried by the broker: the step acknowledges what came
    before the failure, and the consumer loop drops the subscription, waits ``delay``
    seconds and subscribes again, which delivers the unacknowledged events again. Not an
    :class:`~outboxkit.errors.OutboxError`: it never reaches application code.
    """

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason
