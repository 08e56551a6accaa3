"""Translation of kafka-python failures to the outboxkit error tree."""

from __future__ import annotations

from outboxkit.errors import BrokerError, BrokerUnavailableError, MessageRejectedError


def translate(exc: BaseException, what: str) -> BrokerError:
    """Map a kafka-python failure to our tree: outage -> unavailable, anything else rejected."""
    from kafka import errors as kerr

    text = f"{what}: {type(exc).__name__}: {exc}"
    unavailable: tuple[type[BaseException], ...] = (
        kerr.KafkaTimeoutError,
        kerr.KafkaConnectionError,
        kerr.BrokerNotAvailableError,
        kerr.RequestTimedOutError,
        kerr.NodeNotReadyError,
        kerr.NotEnoughReplicasError,
        kerr.NotEnoughReplicasAfterAppendError,
        kerr.CoordinatorNotAvailableError,
        kerr.NotCoordinatorError,
        kerr.CoordinatorLoadInProgressError,
        ConnectionError,
        TimeoutError,
    )
    # kafka-python 2.x raises NoBrokersAvailable on bootstrap; 3.x a KafkaTimeoutError.
    no_brokers = getattr(kerr, "NoBrokersAvailable", None)
    if isinstance(no_brokers, type):
        unavailable = (*unavailable, no_brokers)
    if isinstance(exc, unavailable):
        return BrokerUnavailableError(text)
    if isinstance(exc, kerr.KafkaError) and getattr(exc, "retriable", False):
        # Still retriable after the producer's own retries ran out: the cluster is not
        # serving this partition, nothing is wrong with the message.
        return BrokerUnavailableError(text)
    return MessageRejectedError(text)


def same_kind(error: BrokerError, reason: str) -> BrokerError:
    kind = (
        BrokerUnavailableError
        if isinstance(error, BrokerUnavailableError)
        else (MessageRejectedError)
    )
    return kind(reason)


def as_unavailable(exc: BaseException, what: str) -> BrokerError:
    error = translate(exc, what)
    if isinstance(error, BrokerUnavailableError):
        return error
    return BrokerUnavailableError(str(error))
