"""librdkafka errors -> outboxkit errors, decided in one place.

The relay treats the outcomes very differently, so the line between them matters:
:class:`~outboxkit.errors.BrokerUnavailableError` releases the rows *uncounted* and pauses
(nothing is wrong with the message), :class:`~outboxkit.errors.MessageRejectedError` counts
a retry against the row (so a poison message ends ``dead`` instead of blocking its key
forever), and :class:`~outboxkit.errors.PermanentRejectionError` ("permanent" below) marks
it ``dead`` at once: the same bytes can never pass. The decisions, first matching row wins:

=====================================  ============  ========================================
librdkafka error                       ours          why
=====================================  ============  ========================================
``error.fatal()`` / ``_FATAL``         unavailable   the *producer instance* is broken (e.g.
                                                     idempotence state lost): the broker
                                                     builds a new one; the message is fine
``_MSG_TIMED_OUT``                     unavailable   not acknowledged within
                                                     ``message.timeout.ms``: broker away or
                                                     stuck; the producer is replaced too
``_TRANSPORT``, ``_ALL_BROKERS_DOWN``,  unavailable   no connection / no answer in time
``_TIMED_OUT``, ``_RESOLVE``,
``_AUTHENTICATION``, ``_DESTROY``,
``_WAIT_COORD``
``_PURGE_QUEUE``, ``_PURGE_INFLIGHT``  unavailable   we purged a broken producer; the message
                                                     was never judged (a retry may duplicate)
``_QUEUE_FULL`` (``BufferError``)      unavailable   local back-pressure, not the message
``NOT_LEADER_FOR_PARTITION``,          unavailable   the cluster is moving leadership or has
``LEADER_NOT_AVAILABLE``,                            too few replicas: still failing after
``NOT_ENOUGH_REPLICAS[_AFTER_APPEND]``,              librdkafka's own retries, but nothing is
``REQUEST_TIMED_OUT``,                               wrong with the message
``NETWORK_EXCEPTION``,
``BROKER_NOT_AVAILABLE``,
``KAFKA_STORAGE_ERROR``,
``COORDINATOR_*``, ``NOT_COORDINATOR``
``UNKNOWN_PRODUCER_ID``,               unavailable   the broker lost our producer state (it
``OUT_OF_ORDER_SEQUENCE_NUMBER``,                    restarted empty): the producer is replaced
``INVALID_PRODUCER_EPOCH``
``UNKNOWN_TOPIC_OR_PART``,             unavailable   the topic does not exist (yet): as in the
``_UNKNOWN_TOPIC``,                                  kafka-python broker, where the same case is
``_UNKNOWN_PARTITION``                               a metadata timeout; creating the topic
                                                     fixes every row at once
``MSG_SIZE_TOO_LARGE``,                permanent     this message is too big (librdkafka checks
``RECORD_LIST_TOO_LARGE``                            ``message.max.bytes`` before sending)
``INVALID_RECORD``, ``INVALID_MSG``    permanent     the broker calls this record invalid or
                                                     corrupt (checksum, size)
``TOPIC_EXCEPTION``                    permanent     the message names an invalid topic
``UNSUPPORTED_FOR_MESSAGE_FORMAT``,    rejected      the topic's format or policy refuses the
``POLICY_VIOLATION``                                 record: a setting an operator may still
                                                     change while the retries run
``TOPIC_AUTHORIZATION_FAILED``,        rejected      we may not write this message's topic;
``CLUSTER_AUTHORIZATION_FAILED``                     counted, as kafka-python's broker does, so
                                                     both brokers classify alike (an operator
                                                     fixes ACLs, then re-queues dead rows)
``_INVALID_ARG``, ``TypeError``        rejected      the client refused the message's fields
any other, ``error.retriable()``       unavailable   librdkafka says trying again may work
any other                              rejected      a definite refusal we do not know
=====================================  ============  ========================================

:func:`replaces_producer` names the errors after which the shared producer is rebuilt.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from outboxkit.errors import (
    BrokerError,
    BrokerUnavailableError,
    MessageRejectedError,
    PermanentRejectionError,
)

__all__ = ["error_of", "replaces_producer", "translate", "translate_exception"]

_UNAVAILABLE = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._AUTHENTICATION,
        KafkaError._DESTROY,
        KafkaError._WAIT_COORD,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._QUEUE_FULL,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
    }
)

#: The same message can never pass: ``dead`` at once.
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.TOPIC_EXCEPTION,
    }
)

_REJECTED = frozenset(
    {
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._INVALID_ARG,
    }
)

#: After these the producer's own state is suspect: it is closed and a new one is built.
_REPLACE_PRODUCER = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
    }
)


def translate(error: KafkaError, what: str) -> BrokerError:
    """Our error for a librdkafka ``KafkaError`` (see the table in the module docstring)."""
    text = f"{what}: {error.name()}: {error.str()}"
    code = error.code()
    if error.fatal() or code in _UNAVAILABLE:
        return BrokerUnavailableError(text)
    if code in _PERMANENT:
        return PermanentRejectionError(text)
    if code in _REJECTED:
        return MessageRejectedError(text)
    if error.retriable():
        return BrokerUnavailableError(text)
    return MessageRejectedError(text)


def error_of(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def translate_exception(exc: BaseException, what: str) -> BrokerError:
    """Our error for anything a confluent-kafka call raised."""
    error = error_of(exc)
    if error is not None:
        return translate(error, what)
    if isinstance(exc, BufferError):
        return BrokerUnavailableError(f"{what}: local producer queue full: {exc}")
    if isinstance(exc, (TypeError, ValueError)):
        return MessageRejectedError(f"{what}: {type(exc).__name__}: {exc}")
    return BrokerUnavailableError(f"{what}: {type(exc).__name__}: {exc}")


def replaces_producer(error: KafkaError | Any) -> bool:
    """Whether the producer that reported ``error`` must be replaced by a new one.

    A fatal error leaves the producer unusable; a delivery timeout or lost producer id means
    its idempotence state may no longer match the broker's (Tansu restarted empty keeps
    answering ``UNKNOWN_PRODUCER_ID`` to the old producer until its messages time out).
    A new producer costs one ``InitProducerId`` round trip.
    """
    return isinstance(error, KafkaError) and (error.fatal() or error.code() in _REPLACE_PRODUCER)
