"""The engine: routes, handlers, the publisher, and the named threads that relay and consume.

Typical use::

    routing = Routing()
    routing.register("order.placed", "orders")
    engine = Engine(SqlRepository(db), KafkaBroker(KafkaConfig.from_bootstrap("k:9092")), routing)

    @engine.handler("order.placed")
    def ship(event, connection): ...

    # request code, inside the caller's transaction:
    engine.publish(PublishRequest(event_type="order.placed", payload={...}), connection=conn)

    # worker process:
    engine.start(); ...; engine.stop(timeout=30)

Threads are named ``outboxkit-relay-<service>-<n>`` and ``outboxkit-consumer-<service>-<n>``.
They wait on events (never bare sleeps), log unexpected exceptions with their ids and go on,
and back off while the broker or database is unreachable, resuming by themselves.
:meth:`Engine.stop` stops claiming and receiving, lets in-flight handlers finish, then closes
the broker. :meth:`Engine.run_once` does one relay step and one consume step per service in
the calling thread, for tests and scripts.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import attrs
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.broker import Broker, Subscription
from outboxkit.consumer import Consumer, ConsumerConfig, Outcome
from outboxkit.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    RepositoryError,
)
from outboxkit.messages import Event, PublishRequest
from outboxkit.outbox import Publisher, PublisherConfig
from outboxkit.registry import HandlerRegistry
from outboxkit.relay import Relay, RelayConfig
from outboxkit.repository import Repository
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route, Routing

logger = logging.getLogger(__name__)

#: How many recent end-to-end latencies :class:`EngineStats` keeps for percentiles.
LATENCY_SAMPLES = 100_000


def default_consumer_name() -> str:
    """``<host>-<pid>``: stable for the life of a process, distinct between processes."""
    return f"{socket.gethostname()}-{os.getpid()}"


@attrs.frozen(kw_only=True)
class EngineConfig:
    """Everything an :class:`Engine` can be told; all parts have working defaults."""

    relay: RelayConfig = attrs.field(factory=RelayConfig)
    consumer: ConsumerConfig = attrs.field(factory=ConsumerConfig)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    publisher: PublisherConfig = attrs.field(factory=PublisherConfig)
    #: Services whose rows this process relays; ``None`` means those it has handlers for.
    relay_services: tuple[str, ...] | None = None
    #: Services whose topic this process consumes; ``None`` means those it has handlers for.
    consumer_services: tuple[str, ...] | None = None
    relay_threads: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    consumer_threads: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    #: Stable member name in the consumer groups (suffixed with the thread number).
    consumer_name: str = attrs.field(factory=default_consumer_name)
    #: ``False`` mirrors the Go ``kafka.enabled=false`` fallback: no threads, no broker,
    #: and :meth:`Engine.publish` runs the local handler at once in the caller's transaction.
    enabled: bool = True


@attrs.define
class EngineStats:
    """Counters of what this engine did since it was created (thread-safe snapshot)."""

    published: int = 0
    consumed: int = 0
    retried: int = 0
    dead: int = 0
    duplicates: int = 0
    skipped: int = 0
    latencies: list[float] = attrs.field(factory=list)

    def percentile(self, fraction: float) -> float | None:
        """The ``fraction`` (0..1) percentile of publish-to-consume latency, in seconds."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        return ordered[index]


class Engine:
    """Owns the relay and consumer threads of the services this process serves."""

    def __init__(
        self,
        repository: Repository,
        broker: Broker | None,
        routing: Routing | None = None,
        *,
        registry: HandlerRegistry | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        if broker is None and self.config.enabled:
            raise ConfigurationError("an enabled Engine needs a broker (or enabled=False)")
        self.repository = repository
        self.broker = broker
        self.routing = routing or Routing()
        self.registry = registry or HandlerRegistry(self.routing)
        if self.registry.routing is not self.routing:
            raise ConfigurationError("the handler registry must use the engine's routing")
        self.publisher = Publisher(repository, self.routing, config=self.config.publisher)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self._commit_wakes: weakref.WeakKeyDictionary[Connection, set[str]] = (
            weakref.WeakKeyDictionary()
        )
        self._listening: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._wake_lock = threading.Lock()
        self._lifecycle = threading.Lock()
        self._started = False
        self._stopped = False
        self._stats = EngineStats()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self._stats_lock = threading.Lock()
        self._step_relays: dict[str, Relay] = {}
        self._step_consumers: dict[str, tuple[Consumer, Subscription]] = {}

    # ------------------------------------------------------------------ registration

    def route(self, event_type: str, service: str) -> Route:
        """Route ``event_type`` to ``service`` (see :meth:`Routing.register`)."""
        return self.routing.register(event_type, service)

    def register_handler(
        self,
        event_type: str,
        handler: Callable[..., Any] | None = None,
        *,
        transactional: bool = True,
    ) -> Callable[..., Any]:
        """Register the handler of ``event_type``; usable as a decorator without ``handler``.

        Must happen before :meth:`start` for the service's consumer to be started.
        """
        if self._started and handler is not None:
            logger.warning(
                "handler for %s registered after start(): its service is served only if it "
                "already was",
                event_type,
            )
        return self.registry.register(event_type, handler, transactional=transactional)

    handler = register_handler

    # ------------------------------------------------------------------ publishing

    def publish(
        self, request: PublishRequest, *, connection: Connection | Session | None = None
    ) -> str:
        """Write ``request`` to its service's outbox (in ``connection``'s transaction if given).

        Returns the event id. When the engine is disabled, runs the local handler instead.
        """
        return self.publish_many([request], connection=connection)[0]

    def publish_many(
        self,
        requests: Sequence[PublishRequest],
        *,
        connection: Connection | Session | None = None,
    ) -> list[str]:
        """Write several events in one go; see :meth:`publish`. Returns their event ids."""
        if not self.config.enabled:
            missing = sorted({r.event_type for r in requests} - set(self.registry.event_types()))
            if missing:  # checked for all first, so no handler runs for a rejected batch
                raise ConfigurationError(
                    f"outbox is disabled and this process has no handler for {missing}"
                )
            return [self._handle_inline(r, connection) for r in requests]
        ids = self.publisher.publish_many(requests, connection=connection)
        services = {self.routing.service_of(r.event_type) for r in requests}
        if connection is None:
            self._wake_relays(services)  # committed already
        else:
            conn = connection.connection() if isinstance(connection, Session) else connection
            self._wake_on_commit(conn, services)
        return ids

    def _wake_relays(self, services: Iterable[str]) -> None:
        """Let this process's relays claim new rows now instead of after their idle wait."""
        for service in services:
            self._wake[service].set()

    def _wake_on_commit(self, connection: Connection, services: set[str]) -> None:
        """Wake the relays when the caller's transaction commits (never on rollback).

        The rows are invisible to relays until then, so waking earlier would be useless;
        waiting for the next poll would add up to ``idle_interval`` of latency. Listeners
        are attached once per connection and consult the pending set.
        """
        with self._wake_lock:
            pending = self._commit_wakes.get(connection)
            if pending is not None:
                pending.update(services)
                return
            self._commit_wakes[connection] = set(services)
            first_time = connection not in self._listening
            self._listening.add(connection)
        if first_time:
            sa_event.listen(connection, "commit", self._on_commit)
            sa_event.listen(connection, "rollback", self._on_rollback)

    def _on_commit(self, connection: Connection) -> None:
        with self._wake_lock:
            woken = self._commit_wakes.pop(connection, set())
        self._wake_relays(woken)

    def _on_rollback(self, connection: Connection) -> None:
        with self._wake_lock:
            self._commit_wakes.pop(connection, None)

    def _handle_inline(
        self, request: PublishRequest, connection: Connection | Session | None
    ) -> str:
        spec = self.registry.get(request.event_type)
        assert spec is not None  # checked by publish_many
        event = Event(
            event_id=request.event_id,
            outbox_id=0,
            event_type=request.event_type,
            event_version=request.event_version,
            service_name=spec.service,
            aggregate_id=request.aggregate_id,
            message_key=request.message_key,
            payload=request.payload,
            headers=request.headers,
            attempt=1,
            occurred_at=None,
        )
        if not spec.transactional:
            spec.func(event)
        elif connection is not None:
            conn = connection.connection() if isinstance(connection, Session) else connection
            spec.func(event, conn)
        else:
            with self.repository.transaction() as conn:
                spec.func(event, conn)
        return request.event_id

    # ------------------------------------------------------------------ schema

    def create_schema(self, services: Iterable[str] | None = None) -> list[Route]:
        """Create the outbox tables of ``services`` (default: every routed service)."""
        names = list(services) if services is not None else self.routing.services()
        routes = [self.routing.route_of_service(s) for s in names]
        self.repository.create_schema(routes)
        return routes

    # ------------------------------------------------------------------ what to serve

    def relay_routes(self) -> list[Route]:
        names = self.config.relay_services
        if names is None:
            names = tuple(self.registry.services())
        return [self.routing.route_of_service(s) for s in names]

    def consumer_routes(self) -> list[Route]:
        names = self.config.consumer_services
        if names is None:
            names = tuple(self.registry.services())
        return [self.routing.route_of_service(s) for s in names]

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    def start(self) -> None:
        """Start the relay and consumer threads and return at once.

        A disabled engine starts nothing. Starting twice is an error; so is restarting a
        stopped engine (build a new one).
        """
        with self._lifecycle:
            if self._started:
                raise ConfigurationError("engine already started")
            self._started = True
            if not self.config.enabled:
                logger.info("outbox engine disabled: no relay or consumer threads")
                return
            for route in self.relay_routes():
                for n in range(self.config.relay_threads):
                    self._spawn(f"outboxkit-relay-{route.service}-{n}", self._relay_loop, route)
            for route in self.consumer_routes():
                for n in range(self.config.consumer_threads):
                    name = f"{self.config.consumer_name}-{n}"
                    self._spawn(
                        f"outboxkit-consumer-{route.service}-{n}", self._consumer_loop, route, name
                    )
            logger.info(
                "outbox engine started: relays %s, consumers %s",
                [r.service for r in self.relay_routes()],
                [r.service for r in self.consumer_routes()],
            )

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop claiming and receiving, let in-flight handlers finish, close the broker.

        Idempotent. Returns whether every thread finished within ``timeout`` seconds.
        """
        with self._lifecycle:
            first = not self._stopped
            self._stopped = True
            self._stopping.set()
            for wake in list(self._wake.values()):
                wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        finished = not any(t.is_alive() for t in self._threads)
        if first:
            for _, subscription in self._step_consumers.values():
                subscription.close()
            if self.broker is not None:
                try:
                    self.broker.close()
                except Exception:
                    logger.exception("closing the broker failed")
            if finished:
                logger.info("outbox engine stopped")
            else:
                alive = [t.name for t in self._threads if t.is_alive()]
                logger.warning("outbox engine stop timed out; still running: %s", alive)
        return finished

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ single steps

    def run_once(self, *, receive_timeout: float = 0.5) -> int:
        """One relay step and one consume step for every served service, in this thread.

        Returns the number of rows published plus deliveries handled. Broker or database
        outages propagate, unlike in the threads, so a test sees them.
        """
        if not self.config.enabled:
            return 0
        assert self.broker is not None
        work = 0
        for route in self.relay_routes():
            relay = self._step_relays.get(route.service)
            if relay is None:
                relay = self._step_relays[route.service] = self._relay(route)
            step = relay.run_once()
            self._count(published=step.published)
            work += step.published
        for route in self.consumer_routes():
            pair = self._step_consumers.get(route.service)
            if pair is None:
                self.broker.ensure_topic(route.topic, route.group)
                subscription = self.broker.subscribe(
                    route.topic, route.group, f"{self.config.consumer_name}-step"
                )
                pair = self._step_consumers[route.service] = (self._consumer(route), subscription)
            consumer, subscription = pair
            work += consumer.run_once(subscription, timeout=receive_timeout)
        return work

    # ------------------------------------------------------------------ observation

    def stats(self) -> EngineStats:
        """A snapshot of the counters and recent latencies."""
        with self._stats_lock:
            return attrs.evolve(self._stats, latencies=list(self._latencies))

    def backlog(self) -> dict[str, dict[str, Any]]:
        """Per relayed service: rows per status and the age of the oldest pending row."""
        result: dict[str, dict[str, Any]] = {}
        for route in self.relay_routes():
            counts = self.repository.count_by_status(route)
            result[route.service] = {
                **{status.value: n for status, n in counts.items()},
                "oldest_pending_age": self.repository.oldest_pending_age(route),
            }
        return result

    # ------------------------------------------------------------------ internals

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _relay(self, route: Route) -> Relay:
        assert self.broker is not None
        return Relay(
            self.repository,
            self.broker,
            route,
            config=self.config.relay,
            retry_policy=self.config.retry,
        )

    def _consumer(self, route: Route) -> Consumer:
        return Consumer(
            self.repository,
            route,
            self.registry,
            config=self.config.consumer,
            retry_policy=self.config.retry,
            on_outcome=self._record_outcome,
        )

    def _relay_loop(self, route: Route) -> None:
        relay = self._relay(route)
        config = self.config.relay
        wake = self._wake[route.service]
        backoff = config.outage_backoff
        next_rescue = time.monotonic() + config.republish_interval
        topic_ready = False
        while not self._stopping.is_set():
            try:
                if not topic_ready:
                    assert self.broker is not None
                    self.broker.ensure_topic(route.topic)
                    topic_ready = True
                wake.clear()
                step = relay.run_once()
                self._count(published=step.published)
                backoff = config.outage_backoff
                if time.monotonic() >= next_rescue:
                    next_rescue = time.monotonic() + config.republish_interval
                    relay.republish_stale()
                if step.claimed < config.batch_size:
                    wake.wait(config.idle_interval)
            except (BrokerUnavailableError, RepositoryError) as exc:
                logger.warning(
                    "relay %s paused %.1f s: %s", route.service, backoff, exc, exc_info=True
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, config.outage_backoff_max)
            except Exception:
                logger.exception("relay %s step failed unexpectedly; going on", route.service)
                self._stopping.wait(config.outage_backoff)

    def _consumer_loop(self, route: Route, member: str) -> None:
        assert self.broker is not None
        consumer = self._consumer(route)
        config = self.config.consumer
        backoff = config.outage_backoff
        subscription: Subscription | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if subscription is None:
                        self.broker.ensure_topic(route.topic, route.group)
                        subscription = self.broker.subscribe(route.topic, route.group, member)
                    consumer.run_once(subscription, should_stop=self._stopping.is_set)
                    backoff = config.outage_backoff
                except Exception as exc:
                    outage = isinstance(exc, (BrokerUnavailableError, RepositoryError))
                    if outage:
                        logger.warning("consumer %s paused %.1f s: %s", route.service, backoff, exc)
                    else:
                        logger.exception(
                            "consumer %s step failed unexpectedly; going on", route.service
                        )
                    # Unacknowledged deliveries must come again: drop the subscription so
                    # a later acknowledgement can never cover them.
                    if subscription is not None:
                        _close_quietly(subscription)
                        subscription = None
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, config.outage_backoff_max)
        finally:
            if subscription is not None:
                _close_quietly(subscription)

    def _record_outcome(self, event: Event | None, outcome: Outcome) -> None:
        latency = None
        if outcome is Outcome.CONSUMED and event is not None and event.occurred_at:
            latency = _seconds_since(event.occurred_at)
        with self._stats_lock:
            if outcome is Outcome.CONSUMED:
                self._stats.consumed += 1
                if latency is not None:
                    self._latencies.append(latency)
            elif outcome is Outcome.RETRY:
                self._stats.retried += 1
            elif outcome is Outcome.DEAD:
                self._stats.dead += 1
            elif outcome is Outcome.DUPLICATE:
                self._stats.duplicates += 1
            else:
                self._stats.skipped += 1

    def _count(self, *, published: int) -> None:
        if published:
            with self._stats_lock:
                self._stats.published += published


def _close_quietly(subscription: Subscription) -> None:
    try:
        subscription.close()
    except Exception:
        logger.exception("closing a subscription failed")


def _seconds_since(iso: str) -> float | None:
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - moment).total_seconds()
