"""Translation of kafka-python failures to the outboxkit error tree, in one table.

The relay treats the two kinds of :class:`~outboxkit.errors.BrokerError` very differently,
so the choice matters more than anything else in this package:

- :class:`~outboxkit.errors.BrokerUnavailableError`: *the broker (or our client) is unwell*.
  The rows are released **uncounted** and the relay backs off. Nothing about the message is
  known to be wrong, so an outage, however long, never burns an event's retries.
- :class:`~outboxkit.errors.MessageRejectedError`: *this message is bad*. One **counted**
  retry; the row ends ``dead`` when its retries run out.
- :class:`~outboxkit.errors.PermanentRejectionError`: *this message can never be sent as
  it is* (over ``max_request_size`` or the topic's ``max.message.bytes``, an invalid topic
  name, a record the broker calls invalid or corrupt). The row goes ``dead`` at once with
  the reason: retrying the same bytes only fails the same way until ``max_retry``.
  kafka-python splits a batch the broker finds too large before failing it, so these
  errors are about the one record.

When in doubt an error that the broker or the client can cause on its own (an outage, a lost
producer state, a topic that vanished with a restarted broker, a setting the cluster refuses)
is *unavailable*; only what the message itself caused is *rejected*. Misclassifying an
outage as a rejection kills healthy events ~20 minutes later (the reliability issue this
table was written for); misclassifying a bad message as an outage only holds its row back,
logged, until someone looks.

:data:`VERDICTS` maps an exception class name to a :class:`Verdict`; :func:`classify` looks
each class of the exception's MRO up in order (the most specific entry wins), so a subclass
kafka-python adds later inherits its base's verdict. Names, not classes, keep the table
importable without kafka-python and valid across its versions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from outboxkit.errors import (
    BrokerError,
    BrokerUnavailableError,
    MessageRejectedError,
    PermanentRejectionError,
)


class Verdict(enum.Enum):
    """What a failed send means, and so what the broker does about it."""

    #: The broker is down, slow, electing a leader or overloaded: release uncounted.
    UNAVAILABLE = "unavailable"
    #: The producer's idempotence state is broken (the broker forgot our producer id, or the
    #: client reached a fatal state). It never recovers by itself: close the producer, build
    #: a new one, release uncounted.
    PRODUCER_BROKEN = "producer broken"
    #: The topic or partition is unknown to the broker (e.g. a broker restarted without its
    #: state): create the topic again if we created it before, release uncounted.
    TOPIC_MISSING = "topic missing"
    #: The cluster refuses our settings or credentials. Not the message's fault, and no
    #: retry of it can help: release uncounted and log at ERROR so an operator sees it.
    MISCONFIGURED = "misconfigured"
    #: This message was refused, perhaps not for ever (a timestamp out of range, an
    #: answer the table does not know): counted retry.
    REJECTED = "rejected"
    #: This message can never be sent as it is (too large, invalid topic name, invalid or
    #: corrupt record): ``dead`` at once.
    PERMANENT = "permanent"

    @property
    def unavailable(self) -> bool:
        """True when the message is released uncounted (every verdict but the rejections)."""
        return self not in (Verdict.REJECTED, Verdict.PERMANENT)


_U = Verdict.UNAVAILABLE
_P = Verdict.PRODUCER_BROKEN
_T = Verdict.TOPIC_MISSING
_M = Verdict.MISCONFIGURED
_R = Verdict.REJECTED
_X = Verdict.PERMANENT

#: Exception class name -> verdict, looked up along the MRO (see :func:`classify`).
VERDICTS: Mapping[str, Verdict] = {
    # --- catch-alls, the least specific entries
    # An error we do not know that kafka-python itself calls transient (the producer has
    # already retried it until ``delivery_timeout_ms``): the cluster is not serving.
    "RetriableError": _U,
    # Timeouts, refused or reset connections, DNS failures: an outage.
    "OSError": _U,
    # A non-retriable answer about this request that the table does not name: the broker
    # looked at the message and refused it.
    "BrokerResponseError": _R,
    "KafkaError": _R,
    # TypeError/ValueError from ``send()`` (a header or key the client cannot encode, an
    # invalid topic name caught client-side): this message cannot be sent as it is.
    "Exception": _R,
    # --- the broker or the cluster is unwell (non-retriable in kafka-python, still outages)
    "BrokerNotAvailableError": _U,
    # Error -1, "unexpected server error": the broker failed, not the message.
    "UnknownError": _U,
    # Garbage or a mismatched answer on the connection: the connection is unwell.
    "KafkaProtocolError": _U,
    "OperationNotAttemptedError": _U,  # the broker did not even try
    "QuotaViolationError": _U,  # throttled: it passes
    "UnknownBrokerIdError": _U,
    "BrokerIdNotRegisteredError": _U,
    "StaleControllerEpochError": _U,
    "StaleBrokerEpochError": _U,
    "InconsistentClusterIdError": _U,  # bootstrap list spans clusters: nothing to retry on
    "NoError": _U,  # never a failure; if seen, certainly not the message's fault
    # --- the producer's idempotence state is broken: rebuild it (see Verdict)
    # The broker no longer knows our producer id: it restarted without its state (Tansu
    # memory storage, a lost log) or the id expired (Apache Kafka gives the same error).
    # kafka-python then bumps the epoch (KIP-360), which Tansu answers with UnknownError and
    # kafka-python treats as fatal: only a new producer gets a new id.
    "UnknownProducerIdError": _P,
    "OutOfOrderSequenceNumberError": _P,
    "InvalidProducerEpochError": _P,
    "ProducerFencedError": _P,
    "InvalidProducerIdMappingError": _P,
    "DuplicateSequenceNumberError": _P,
    "InvalidTxnStateError": _P,
    "TransactionCoordinatorFencedError": _P,
    "TransactionAbortedError": _P,
    "TransactionAbortableError": _P,
    # ``send()`` on a closed producer (another thread just replaced a broken one; when the
    # KafkaBroker itself is closed the caller raises BrokerClosedError instead), or a
    # producer whose transaction manager reached a fatal state.
    "IllegalStateError": _P,
    # --- the topic is gone: create it again
    "UnknownTopicOrPartitionError": _T,
    "UnknownTopicIdError": _T,
    "InconsistentTopicIdError": _T,
    # --- the cluster refuses our configuration or credentials: loud, uncounted
    # Authorization is a configuration problem, not a bad message: every event of the topic
    # would die the same way once an ACL is missing.
    "AuthorizationError": _M,
    "SaslAuthenticationFailedError": _M,
    "IllegalSaslStateError": _M,
    "UnsupportedSaslMechanismError": _M,
    "UnacceptableCredentialError": _M,
    "SecurityDisabledError": _M,
    "DelegationTokenAuthDisabledError": _M,
    "DelegationTokenExpiredError": _M,
    "DelegationTokenNotFoundError": _M,
    "DelegationTokenOwnerMismatchError": _M,
    "DelegationTokenRequestNotAllowedError": _M,
    "UnsupportedVersionError": _M,
    "UnrecognizedBrokerVersion": _M,
    "UnsupportedForMessageFormatError": _M,  # topic's message format vs. our producer
    "UnsupportedCompressionTypeError": _M,  # compression_type the broker refuses
    "UnsupportedCodecError": _M,  # compression library missing on this host
    "InvalidRequiredAcksError": _M,
    "KafkaConfigurationError": _M,
    "InvalidConfigurationError": _M,
    "PolicyViolationError": _M,  # ensure_topic: the cluster's create-topic policy
    "InvalidPartitionsError": _M,
    "InvalidReplicationFactorError": _M,
    "InvalidReplicationAssignmentError": _M,
    "TopicDeletionDisabledError": _M,
    # --- this message can never be sent as it is: dead at once
    "MessageSizeTooLargeError": _X,  # over max_request_size or the topic's max.message.bytes
    "RecordListTooLargeError": _X,  # one record over the segment size (batches are split)
    "InvalidTopicError": _X,  # the topic name (chosen by the event's route) is illegal
    "CorruptRecordError": _X,  # the record's checksum or size, as our producer wrote it
    "InvalidRecordError": _X,  # e.g. a compacted topic and a record the broker refuses
    # --- this message is bad, perhaps not for ever: counted retry
    "InvalidTimestampError": _R,  # the producer's clock against the topic's bounds
    "InvalidRequestError": _R,
}

#: Text of the plain ``KafkaError`` kafka-python's transaction manager fails every record
#: with once an InitProducerId request failed for an unexpected reason (a fatal state).
_FATAL_PRODUCER_TEXTS = ("InitProducerIdResponse", "Could not execute transactional request")


def classify(exc: BaseException) -> Verdict:
    """The :class:`Verdict` for a failure of ``send()``, ``flush()`` or a record future."""
    if type(exc).__name__ == "KafkaError" and any(t in str(exc) for t in _FATAL_PRODUCER_TEXTS):
        return Verdict.PRODUCER_BROKEN
    for cls in type(exc).__mro__:
        verdict = VERDICTS.get(cls.__name__)
        if verdict is not None:
            return verdict
    return Verdict.REJECTED  # BaseException subclasses outside Exception: not ours to retry


def error_for(verdict: Verdict, text: str) -> BrokerError:
    """The outboxkit error for ``verdict``: permanently rejected, rejected or (every other
    verdict) unavailable."""
    if verdict.unavailable:
        return BrokerUnavailableError(text)
    if verdict is Verdict.PERMANENT:
        return PermanentRejectionError(text)
    return MessageRejectedError(text)


def translate(exc: BaseException, what: str) -> BrokerError:
    """Map a kafka-python failure to our tree through :data:`VERDICTS`."""
    return error_for(classify(exc), f"{what}: {type(exc).__name__}: {exc}")


def as_unavailable(exc: BaseException, what: str) -> BrokerError:
    """Translate ``exc`` as unavailable whatever it is: used where no message is at fault
    (a poll, an offset commit), so nothing can be counted against one."""
    error = translate(exc, what)
    if isinstance(error, BrokerUnavailableError):
        return error
    return BrokerUnavailableError(str(error))
