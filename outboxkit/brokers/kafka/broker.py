"""KafkaBroker: the shared producer, per-key publish waves, topic creation, subscriptions.

**Recovery.** A broker that restarts without its state (or an Apache Kafka that expired our
producer id) leaves kafka-python's idempotent producer in a state it never leaves by itself:
the first send fails with ``UnknownProducerIdError``, the epoch bump that follows fails, and
from then on every record fails with a fatal ``KafkaError``. Such a producer is closed and
the next publish builds a new one (with a new producer id); the records it failed are
reported *unavailable*, never *rejected* (see :mod:`outboxkit.brokers.kafka.errors`), so the
relay releases them uncounted and delivery resumes by itself. The same broker has also lost
its topics: the topics this object created are remembered, and a send that finds its topic
unknown creates it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from outboxkit.broker import Broker, BrokerMessage, SendResult
from outboxkit.brokers.kafka.clients import SharedClient, close_quietly, new_client
from outboxkit.brokers.kafka.config import KafkaConfig
from outboxkit.brokers.kafka.errors import Verdict, classify, error_for
from outboxkit.brokers.kafka.subscription import KafkaSubscription
from outboxkit.brokers.waves import publish_in_waves
from outboxkit.errors import (
    BrokerClosedError,
    BrokerError,
    BrokerSetupError,
    BrokerUnavailableError,
)

logger = logging.getLogger(__name__)

#: How long closing a broken producer may take. Its pending records fail anyway (they are
#: reported unavailable and sent again through a new producer), so there is nothing to wait
#: for beyond letting its I/O thread wind down.
BROKEN_PRODUCER_CLOSE_SECONDS = 1.0


def _producer_is_broken(producer: Any) -> bool:
    """True when kafka-python's transaction manager reached a fatal state.

    Such a producer fails every record from then on (kafka-python 3.0 keeps the state for
    the life of the object). ``_transaction_manager`` is private, so any surprise reads as
    "not broken" and the record errors (classified in ``errors``) decide instead.
    """
    manager = getattr(producer, "_transaction_manager", None)
    try:
        return manager is not None and bool(manager.has_fatal_error())
    except Exception:
        return False


class KafkaBroker(Broker):
    """A :class:`~outboxkit.broker.Broker` on Kafka (or any Kafka-protocol server).

    Clients are created lazily: constructing a broker never touches the network.
    """

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._closed = False
        self._subscriptions: list[KafkaSubscription] = []
        #: Set by :meth:`interrupt` and :meth:`close`: connection attempts give up at once.
        self._interrupted = threading.Event()
        self._producers = SharedClient(self._new_producer, "producer", self._interrupted)
        self._admins = SharedClient(self._new_admin, "admin client", self._interrupted)
        #: Serialises admin requests (one admin client, used by one thread at a time).
        self._admin_lock = threading.Lock()
        #: Topics ``ensure_topic`` created or found: created again when a broker lost them.
        self._topics: set[str] = set()

    @classmethod
    def from_bootstrap(cls, servers: str | Iterable[str], **kwargs: Any) -> KafkaBroker:
        """Shortcut for ``KafkaBroker(KafkaConfig.from_bootstrap(servers, **kwargs))``."""
        return cls(KafkaConfig.from_bootstrap(servers, **kwargs))

    def __repr__(self) -> str:
        return f"KafkaBroker({self.config.bootstrap_servers!r})"

    @property
    def _producer(self) -> Any:
        """The current kafka-python producer, if one was built (for tests and debugging)."""
        return self._producers.current

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError(f"{self!r} is closed")

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        producer = new_client(
            KafkaProducer,
            self.config.producer_config(),
            "producer",
            self.config.bootstrap_servers,
            self._interrupted,
        )
        logger.info("Kafka producer connected to %s", self.config.bootstrap_servers)
        return producer

    def _new_admin(self) -> Any:
        from kafka import KafkaAdminClient

        return new_client(
            KafkaAdminClient,
            self.config.admin_config(),
            "admin client",
            self.config.bootstrap_servers,
            self._interrupted,
        )

    def _get_producer(self) -> Any:
        self._check_open()
        producer = self._producers.get()
        if _producer_is_broken(producer):
            self._producers.discard(
                producer,
                "it is in a fatal state",
                close_timeout=BROKEN_PRODUCER_CLOSE_SECONDS,
            )
            producer = self._producers.get()
        return producer

    # ------------------------------------------------------------------ publish

    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        """Send ``messages`` in per-key waves (see the package docstring); one result each.

        Raises :class:`BrokerUnavailableError` when no producer can be created (nothing was
        sent) and :class:`BrokerClosedError` after :meth:`close`.
        """
        if not messages:
            self._check_open()
            return []
        producer = self._get_producer()
        return publish_in_waves(
            messages,
            lambda batch: self._send_wave(producer, messages, batch),
            # The producer was replaced: the rest of the batch goes through the relay again
            # (uncounted) rather than waiting here for a new producer to bootstrap.
            abandoned=lambda: BrokerUnavailableError(
                "not sent: the Kafka producer was replaced during this batch"
            ),
        )

    def _send_wave(
        self, producer: Any, messages: Sequence[BrokerMessage], batch: list[int]
    ) -> tuple[dict[int, BrokerError | None], bool]:
        """``send()`` each message of ``batch``, one ``flush()``, then read every future.

        Returns each message's error and whether the producer is still usable (when it is
        not, it has been discarded and every failure of the wave is reported unavailable).
        """
        outcome: dict[int, BrokerError | None] = {}
        verdicts: dict[int, Verdict] = {}
        futures: dict[int, Any] = {}
        outage: BrokerError | None = None
        for index in batch:
            message = messages[index]
            if outage is not None:
                # The broker did not answer for an earlier message of this wave: sending
                # more would only block max_block_ms each.
                outcome[index] = BrokerUnavailableError(str(outage))
                continue
            try:
                futures[index] = producer.send(
                    message.topic,
                    value=message.value,
                    key=message.key.encode("utf-8"),
                    headers=[(k, v.encode("utf-8")) for k, v in message.headers.items()],
                )
            except Exception as exc:
                self._check_open()  # send() on a producer closed by close(): we are closed
                verdicts[index] = verdict = classify(exc)
                outcome[index] = error_for(
                    verdict, f"send to {message.topic!r} failed: {type(exc).__name__}: {exc}"
                )
                if verdict in {Verdict.UNAVAILABLE, Verdict.PRODUCER_BROKEN}:
                    outage = outcome[index]
        if futures:
            try:
                producer.flush(timeout=self.config.flush_timeout)
            except Exception as exc:
                logger.warning("Kafka flush did not complete: %s", exc)
        stalled = False
        for index, future in futures.items():
            topic = messages[index].topic
            if not future.is_done:
                stalled = True
                verdicts[index] = Verdict.UNAVAILABLE
                outcome[index] = BrokerUnavailableError(
                    f"send to {topic!r} not acknowledged within {self.config.flush_timeout:.0f} s"
                )
            elif future.failed():
                failure = future.exception
                verdicts[index] = verdict = classify(failure)
                outcome[index] = error_for(
                    verdict, f"send to {topic!r} failed: {type(failure).__name__}: {failure}"
                )
            else:
                outcome[index] = None
        producer_ok = self._recover(producer, messages, verdicts, outcome, stalled=stalled)
        return outcome, producer_ok

    def _recover(
        self,
        producer: Any,
        messages: Sequence[BrokerMessage],
        verdicts: dict[int, Verdict],
        outcome: dict[int, BrokerError | None],
        *,
        stalled: bool = False,
    ) -> bool:
        """Act on a wave's failures: rebuild a broken producer, re-create lost topics, and
        log what an operator must fix. Returns whether ``producer`` is still usable.

        A producer whose flush timed out with records still unacknowledged is replaced
        too: after a broker came back empty (the topic re-created under a new id), the
        idempotent producer was seen retrying its old batches forever, every later flush
        timing out, for as long as the process lived. Its records were reported
        unavailable, so their rows are sent again by the new producer.
        """
        found = set(verdicts.values())
        broken = Verdict.PRODUCER_BROKEN in found or stalled or _producer_is_broken(producer)
        if broken:
            reasons = {str(outcome[i]) for i, v in verdicts.items() if v is Verdict.PRODUCER_BROKEN}
            if stalled and not reasons:
                reasons = {"its flush timed out with records unacknowledged"}
            self._producers.discard(
                producer,
                "; ".join(sorted(reasons)[:1]) or "it is in a fatal state",
                close_timeout=BROKEN_PRODUCER_CLOSE_SECONDS,
            )
            # Whatever the records failed with, a fatal producer failed them: none of it
            # says anything about the messages.
            for index, error in outcome.items():
                if error is not None and not isinstance(error, BrokerUnavailableError):
                    outcome[index] = BrokerUnavailableError(
                        f"{error} (the Kafka producer failed and is being replaced)"
                    )
        if Verdict.MISCONFIGURED in found:
            sample = next(outcome[i] for i, v in verdicts.items() if v is Verdict.MISCONFIGURED)
            logger.error(
                "Kafka refuses the producer's settings or credentials; events stay pending "
                "until this is fixed: %s",
                sample,
            )
        missing = {messages[i].topic for i, v in verdicts.items() if v is Verdict.TOPIC_MISSING}
        for topic in sorted(missing & self._known_topics()):
            logger.warning("Kafka topic %s is unknown to the broker; creating it again", topic)
            try:
                self._create_topic(topic)
            except BrokerError as exc:
                logger.warning("could not create Kafka topic %s again: %s", topic, exc)
        return not broken

    # ------------------------------------------------------------------ topics

    def _known_topics(self) -> set[str]:
        with self._lock:
            return set(self._topics)

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        """Create ``topic`` with the configured partitions unless it exists.

        With ``KafkaConfig(create_topics=False)`` only checks that it exists, raising
        :class:`~outboxkit.errors.BrokerSetupError` when it does not; so does a broker that
        refuses our credentials or the CreateTopics permission.

        Kafka creates a consumer group when its first member joins, so ``group`` needs
        nothing here. The topic is remembered: should the broker lose it (a restart without
        its state), the next send or subscription that finds it missing creates it again.
        """
        self._check_open()
        self._create_topic(topic)
        with self._lock:
            self._topics.add(topic)

    def _create_topic(self, topic: str) -> None:
        from kafka.errors import TopicAlreadyExistsError

        admin = self._admins.get()
        if not self.config.create_topics:
            self._require_topic(admin, topic)
            return
        spec = {
            "num_partitions": self.config.num_partitions,
            "replication_factor": self.config.replication_factor,
        }
        with self._admin_lock:
            self._check_open()
            try:
                admin.create_topics({topic: spec}, timeout_ms=self.config.request_timeout_ms)
                logger.info("created Kafka topic %s (%s)", topic, spec)
            except TopicAlreadyExistsError:
                pass
            except Exception as exc:
                verdict = classify(exc)
                text = f"cannot create Kafka topic {topic!r}: {type(exc).__name__}: {exc}"
                if verdict is Verdict.MISCONFIGURED:
                    raise BrokerSetupError(
                        f"{text} (check the credentials and the CreateTopics permission, or "
                        "create the topic yourself and set KafkaConfig(create_topics=False))"
                    ) from exc
                raise error_for(verdict, text) from exc

    def _require_topic(self, admin: Any, topic: str) -> None:
        """Raise :class:`BrokerSetupError` unless the cluster has ``topic`` (no creation)."""
        with self._admin_lock:
            self._check_open()
            try:
                topics = set(admin.list_topics())
            except Exception as exc:
                verdict = classify(exc)
                text = f"cannot list Kafka topics to find {topic!r}: {type(exc).__name__}: {exc}"
                if verdict is Verdict.MISCONFIGURED:
                    raise BrokerSetupError(text) from exc
                raise BrokerUnavailableError(text) from exc
        if topic not in topics:
            raise BrokerSetupError(
                f"Kafka topic {topic!r} does not exist on {self.config.bootstrap_servers} and "
                "KafkaConfig(create_topics=False) forbids creating it: create the topic "
                "(partitions, replication) or turn topic creation on"
            )

    # ------------------------------------------------------------------ consume

    def subscribe(self, topic: str, group: str, consumer_name: str) -> KafkaSubscription:
        """Join ``group`` on ``topic`` with a consumer of its own (creating the topic).

        The subscription re-creates the topic and its consumer by itself when its group
        does not settle (see :class:`KafkaSubscription`).
        """
        self._check_open()
        self.ensure_topic(topic, group)
        subscription = KafkaSubscription(
            self.config,
            topic=topic,
            group=group,
            consumer_name=consumer_name,
            ensure_topic=self._create_topic,
            interrupted=self._interrupted,
        )
        with self._lock:
            if self._closed:
                subscription.close()
                raise BrokerClosedError(f"{self!r} is closed")
            self._subscriptions = [s for s in self._subscriptions if not s.closed]
            self._subscriptions.append(subscription)
        return subscription

    # ------------------------------------------------------------------ health

    def ping(self) -> None:
        """Ask the cluster for its metadata (health checks); bounded by the admin timeouts."""
        admin = self._admins.get()
        with self._admin_lock:
            self._check_open()
            try:
                admin.describe_cluster()
            except Exception as exc:
                raise BrokerUnavailableError(
                    f"Kafka at {self.config.bootstrap_servers} did not describe its cluster: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    # ------------------------------------------------------------------ close

    def interrupt(self) -> None:
        """Give up every connection attempt in progress, and every later one (see
        :meth:`Broker.interrupt`): threads waiting for a bootstrap return at once."""
        self._interrupted.set()

    def close(self) -> None:
        """Flush and close the producer, close the admin client, stop every subscription."""
        self._interrupted.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
        producer = self._producers.close()
        if producer is not None:
            try:
                producer.flush(timeout=self.config.flush_timeout)
            except Exception as exc:
                logger.warning("Kafka producer flush on close failed: %s", exc)
            close_quietly(producer, "producer", timeout=self.config.request_timeout_ms / 1000)
        admin = self._admins.close()
        if admin is not None:
            close_quietly(admin, "admin client", timeout=self.config.request_timeout_ms / 1000)
