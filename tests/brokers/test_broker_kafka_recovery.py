"""KafkaBroker when the broker is unwell: error classes, a stopped broker, a restart.

The restart tests run against a private Tansu that each test stops and starts again on the
same port (memory storage, so it comes back **empty**: no topics, groups or producer ids),
never against the session broker other tests share. The classification of every
kafka-python error is checked table-driven; each class that Tansu can produce is checked
on the real broker too (rejected: ``test_broker_kafka.py``'s oversized message; unavailable:
a stopped broker; broken producer: a broker restarted empty).
"""

from __future__ import annotations

import gc
import inspect
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from outboxkit.broker import BrokerMessage, SendResult
from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig
from outboxkit.brokers.kafka.clients import SharedClient
from outboxkit.brokers.kafka.errors import VERDICTS, Verdict, classify, translate
from outboxkit.brokers.waves import same_kind
from outboxkit.errors import (
    BrokerUnavailableError,
    MessageRejectedError,
    PermanentRejectionError,
)
from outboxkit.testing.broker_contract import receive_until
from outboxkit.testing.tansu import TansuServer
from tests.support.concurrency import join_all
from tests.support.engine import wait_for
from tests.support.timing import assert_within

pytestmark = pytest.mark.kafka

#: Generous bound for "eventually" after a restart: producer rebuild, group rejoin and the
#: subscription's settle timeout (5 s here) all fit several times over.
RECOVERY_DEADLINE = 60.0


def _collect_leaked_sockets() -> None:
    """Reap sockets kafka-python leaks to the private broker (see test_broker_kafka.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def tansu() -> Iterator[TansuServer]:
    """A Tansu of this test's own, free to be stopped and restarted."""
    with TansuServer() as server:
        yield server
    _collect_leaked_sockets()


def _config(tansu: TansuServer) -> KafkaConfig:
    """Short timeouts so an outage is reported in seconds, and a quick settle watchdog."""
    return KafkaConfig.from_bootstrap(
        tansu.bootstrap,
        request_timeout_ms=3000,
        delivery_timeout_ms=5000,
        max_block_ms=3000,
        bootstrap_timeout_ms=3000,
        group_settle_timeout_ms=5000,
    )


def _batch(topic: str, label: str, n: int = 12, keys: int = 4) -> list[BrokerMessage]:
    return [
        BrokerMessage(topic=topic, key=f"k{i % keys}", value=f"{label}-{i}".encode())
        for i in range(n)
    ]


def _kinds(results: list[SendResult]) -> list[str]:
    return [type(r.error).__name__ if r.error else "ok" for r in results]


# --------------------------------------------------------------------------- classification


def _kafka_error_classes() -> list[type[BaseException]]:
    from kafka import errors as kerr

    return [
        cls
        for _, cls in sorted(vars(kerr).items())
        if inspect.isclass(cls) and issubclass(cls, BaseException)
    ]


def test_every_kafka_python_error_has_a_verdict_and_only_bad_messages_are_rejected() -> None:
    # Given every exception class kafka-python defines
    rejected, permanent = set(), set()
    for cls in _kafka_error_classes():
        # When it is classified, Then it gets a verdict (the table is total)
        verdict = classify(cls("boom"))
        assert isinstance(verdict, Verdict), cls
        if verdict is Verdict.REJECTED:
            rejected.add(cls.__name__)
        if verdict is Verdict.PERMANENT:
            permanent.add(cls.__name__)
    # And whatever kafka-python calls retriable is never counted against a message
    for cls in _kafka_error_classes():
        if getattr(cls, "retriable", False):
            assert classify(cls("boom")).unavailable, cls
    # And the errors a send can raise because of the message itself are rejected: for good
    # when the same bytes can never pass, else with a counted retry
    assert permanent == {
        "MessageSizeTooLargeError",
        "RecordListTooLargeError",
        "InvalidTopicError",
        "CorruptRecordError",
        "InvalidRecordError",
    }
    assert {"InvalidTimestampError", "InvalidRequestError"} <= rejected
    # And every name in the table is one kafka-python 3.0 still has (no dead entries)
    known = {cls.__name__ for cls in _kafka_error_classes()} | {"OSError", "Exception"}
    assert set(VERDICTS) <= known


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("UnknownProducerIdError", Verdict.PRODUCER_BROKEN),
        ("OutOfOrderSequenceNumberError", Verdict.PRODUCER_BROKEN),
        ("InvalidProducerEpochError", Verdict.PRODUCER_BROKEN),
        ("ProducerFencedError", Verdict.PRODUCER_BROKEN),
        ("IllegalStateError", Verdict.PRODUCER_BROKEN),
        ("UnknownTopicOrPartitionError", Verdict.TOPIC_MISSING),
        ("TopicAuthorizationFailedError", Verdict.MISCONFIGURED),
        ("ClusterAuthorizationFailedError", Verdict.MISCONFIGURED),
        ("SaslAuthenticationFailedError", Verdict.MISCONFIGURED),
        ("UnsupportedVersionError", Verdict.MISCONFIGURED),
        ("KafkaTimeoutError", Verdict.UNAVAILABLE),
        ("KafkaConnectionError", Verdict.UNAVAILABLE),
        ("NotLeaderForPartitionError", Verdict.UNAVAILABLE),
        ("NotEnoughReplicasError", Verdict.UNAVAILABLE),
        ("BrokerNotAvailableError", Verdict.UNAVAILABLE),
        ("UnknownError", Verdict.UNAVAILABLE),
        ("MessageSizeTooLargeError", Verdict.PERMANENT),
        ("InvalidTopicError", Verdict.PERMANENT),
        ("InvalidTimestampError", Verdict.REJECTED),
    ],
)
def test_send_errors_are_classed_by_what_they_say_about_the_message(
    name: str, verdict: Verdict
) -> None:
    from kafka import errors as kerr

    exc = getattr(kerr, name)("boom")
    assert classify(exc) is verdict
    expected = {
        Verdict.REJECTED: MessageRejectedError,
        Verdict.PERMANENT: PermanentRejectionError,
    }.get(verdict, BrokerUnavailableError)
    assert type(translate(exc, "send")) is expected


def test_the_fatal_init_producer_id_error_means_a_broken_producer() -> None:
    from kafka import errors as kerr

    # The plain KafkaError kafka-python fails every record with once it turned fatal
    fatal = kerr.KafkaError("Unexpected error in InitProducerIdResponse: [Error -1] UnknownError")
    assert classify(fatal) is Verdict.PRODUCER_BROKEN
    assert isinstance(translate(fatal, "send"), BrokerUnavailableError)
    # while another plain KafkaError stays a rejection of the message
    assert classify(kerr.KafkaError("something about this record")) is Verdict.REJECTED


def test_os_level_failures_are_outages_and_encoding_failures_rejections() -> None:
    assert classify(ConnectionRefusedError()) is Verdict.UNAVAILABLE
    assert classify(TimeoutError()) is Verdict.UNAVAILABLE
    assert classify(TypeError("headers must be (str, bytes)")) is Verdict.REJECTED


def test_a_key_held_back_after_an_unavailable_message_is_unavailable_too() -> None:
    held = same_kind(BrokerUnavailableError("down"), "not sent")
    assert isinstance(held, BrokerUnavailableError)
    held = same_kind(MessageRejectedError("too large"), "not sent")
    assert isinstance(held, MessageRejectedError)


def test_threads_queued_behind_a_failed_client_build_fail_at_once() -> None:
    # Given a client whose build blocks until released, then fails as an outage would
    release = threading.Event()
    builds = 0

    def build() -> object:
        nonlocal builds
        builds += 1
        release.wait(10)
        raise BrokerUnavailableError("cannot connect")

    shared = SharedClient(build, "admin client")
    waiting = _CountingLock()
    shared._lock = waiting  # type: ignore[assignment]  # to see who waits for the build
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            shared.get()
        except BrokerUnavailableError as exc:
            errors.append(exc)

    # When three threads ask for it while the first build is under way
    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    # ... the other two waiting for it before it fails (waited for, not slept)
    wait_for(lambda: builds == 1 and waiting.waiters == 2, timeout=10, what="two waiters")
    release.set()
    join_all(threads, 10)
    # Then one build was attempted and every thread got its failure
    assert builds == 1
    assert len(errors) == 3
    # And a later caller tries again
    with pytest.raises(BrokerUnavailableError):
        shared.get()
    assert builds == 2


class _CountingLock:
    """A lock that counts the threads waiting to take it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self.waiters = 0

    def __enter__(self) -> bool:
        with self._count:
            self.waiters += 1
        self._lock.acquire()
        with self._count:
            self.waiters -= 1
        return True

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


# --------------------------------------------------------------------------- real broker


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_stopped_broker_is_reported_unavailable_within_the_timeouts(
    tansu: TansuServer, unique: str
) -> None:
    # Given a broker that published fine
    topic = f"stopped.{unique}"
    config = _config(tansu)
    with KafkaBroker(config) as broker:
        broker.ensure_topic(topic)
        assert all(r.ok for r in broker.publish(_batch(topic, "before")))
        # When the Kafka server goes away
        tansu.stop(timeout=1.0)
        started = time.monotonic()
        results = broker.publish(_batch(topic, "during"))
        # Then every message is unavailable (none rejected), within the configured bounds
        assert _kinds(results) == ["BrokerUnavailableError"] * len(results)
        bound = (config.max_block_ms + config.delivery_timeout_ms) / 1000
        assert_within(time.monotonic() - started, bound, "publish to a stopped broker")


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_broker_restarted_empty_is_unavailable_until_publishing_resumes_by_itself(
    tansu: TansuServer, unique: str
) -> None:
    """The regression: the old producer failed every send for good, as *rejected*."""
    topic = f"restart.{unique}"
    with KafkaBroker(_config(tansu)) as broker:
        # Given a KafkaBroker in use
        broker.ensure_topic(topic)
        assert all(r.ok for r in broker.publish(_batch(topic, "before")))
        # When its server restarts without its state (producer ids, topics, groups)
        tansu.restart(stop_timeout=1.0)
        # Then publishes fail as unavailable, never as rejected, until they succeed again
        deadline = time.monotonic() + RECOVERY_DEADLINE
        attempts = 0
        while True:
            attempts += 1
            results = broker.publish(_batch(topic, f"after{attempts}"))
            kinds = _kinds(results)
            assert "MessageRejectedError" not in kinds, [str(r.error) for r in results]
            if kinds == ["ok"] * len(results):
                break
            assert time.monotonic() < deadline, f"still failing after {attempts}: {kinds}"
            time.sleep(0.2)
        # And what the same object published afterwards reaches a consumer
        sub = broker.subscribe(topic, f"g.{unique}", "m")
        try:
            received = receive_until([sub], len(results), time.monotonic() + RECOVERY_DEADLINE)
        finally:
            sub.close()
        assert sorted(d.value for _, d in received) == sorted(r.message.value for r in results)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_live_subscription_recovers_by_itself_after_the_broker_restarted_empty(
    tansu: TansuServer, unique: str
) -> None:
    topic = f"resub.{unique}"
    with KafkaBroker(_config(tansu)) as broker:
        # Given a subscription that has received and acknowledged what was published
        sub = broker.subscribe(topic, f"g.{unique}", "m")
        try:
            assert all(r.ok for r in broker.publish(_batch(topic, "before", n=4)))
            before = receive_until([sub], 4, time.monotonic() + RECOVERY_DEADLINE)
            sub.ack_many([d for _, d in before])
            # When the server restarts empty and messages are published again
            tansu.restart(stop_timeout=1.0)
            deadline = time.monotonic() + RECOVERY_DEADLINE
            after = _batch(topic, "after", n=4)
            while not all(r.ok for r in broker.publish(after)):
                assert time.monotonic() < deadline, "publishing did not resume"
                time.sleep(0.2)
            # Then the same subscription object receives them, without being recreated
            received = receive_until([sub], 4, deadline)
            assert sorted(d.value for _, d in received) == sorted(m.value for m in after)
        finally:
            sub.close()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_subscription_whose_group_does_not_settle_rejoins_with_a_new_consumer(
    tansu: TansuServer, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka import KafkaConsumer

    topic = f"stuck.{unique}"
    group = f"g.{unique}"
    config = _config(tansu)
    with KafkaBroker(config) as broker:
        broker.ensure_topic(topic)
        # Given a member of the group that holds every partition and then stops polling
        # (a real kafka-python consumer: its heartbeats keep it in the group, but it never
        # rejoins, so any rebalance waits for it)
        blocker = KafkaConsumer(topic, **config.consumer_config(group=group, consumer_name="x"))
        try:
            deadline = time.monotonic() + RECOVERY_DEADLINE
            while not blocker.assignment():
                assert time.monotonic() < deadline, "the blocking member never joined"
                blocker.poll(timeout_ms=200)
            # When our subscription joins that group
            sub = broker.subscribe(topic, group, "m")
            try:
                # Then it notices it is stuck in a rebalance and rejoins with a new consumer
                while sub.recreations == 0:
                    assert time.monotonic() < deadline, "an unsettled group went unnoticed"
                    assert sub.receive(timeout=0.5) == []
                assert "has not settled" in caplog.text
            finally:
                sub.close()
        finally:
            blocker.close()
        # (Recovery of the group itself is not asserted: on Tansu 0.6 a group caught this
        # way keeps failing SyncGroup even for a lone fresh member; see the report.)
