"""The :class:`Engine`: routes, handlers, the publisher, and the threads that relay and consume.

Threads are named ``outboxkit-relay-<service>-<n>`` and ``outboxkit-consumer-<service>-<n>``
(plus ``outboxkit-housekeeping`` when ``EngineConfig.retention`` is set).
They wait on events (never bare sleeps), log unexpected exceptions with their ids and go on,
and back off while the broker or database is unreachable, resuming by themselves. A
:class:`~outboxkit.errors.FatalError` (refused password, unknown database, missing table or
topic) stops every thread instead: :attr:`Engine.fatal_error` holds it, logged once.
:meth:`Engine.stop` stops claiming and receiving, lets in-flight handlers finish, then closes
the broker, all within its timeout whatever state the broker is in. :meth:`Engine.run_once`
does one relay step and one consume step per service in the calling thread, for tests and
scripts.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, overload

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.broker import Broker, Subscription
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.handler_scope import HandlerScope
from outboxkit.consume.handler_shapes import call_with_session
from outboxkit.consume.ledger import Ledger
from outboxkit.consume.outbox_ledger import OutboxLedger
from outboxkit.consume.registry import (
    HandlerRegistry,
    HandlerSpec,
    SideEffectHandlerT,
    TransactionalHandlerT,
)
from outboxkit.engine.config import EngineConfig
from outboxkit.engine.housekeeping import run_housekeeping
from outboxkit.engine.loops import run_consumer, run_listener, run_relay
from outboxkit.engine.outages import OutageLog, one_line
from outboxkit.engine.placement import check_consumers
from outboxkit.engine.stats import EngineStats, StatsRecorder
from outboxkit.engine.wakeups import Wakeups
from outboxkit.errors import ConfigurationError, FatalError
from outboxkit.inbox.base import Inbox, RedeliveryRequested
from outboxkit.inbox.ledger import InboxLedger
from outboxkit.inbox.receipts import (
    ReceiptApplier,
    ReceiptSender,
    receipts_group,
    receipts_topic,
    run_receipts,
)
from outboxkit.inbox.schema import inbox_table
from outboxkit.messages import Event, Outcome, PublishRequest
from outboxkit.observability.health import DEFAULT_TIMEOUT as HEALTH_TIMEOUT
from outboxkit.observability.health import HealthReport, check_health
from outboxkit.observability.observers import Observer, Observers, report_outcome
from outboxkit.publish.causality import handled_event, handling, with_flow_ids
from outboxkit.publish.checks import check_executor
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay
from outboxkit.routing import Route, Routing
from outboxkit.store import Repository
from outboxkit.wire.payloads import decode_payload

logger = logging.getLogger(__name__)

#: Least time ``stop`` gives the broker's ``close`` even when the threads used the timeout.
BROKER_CLOSE_MIN_SECONDS = 0.5


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
        inboxes: Mapping[str, Inbox] | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        #: Service -> the inbox its consumer keeps on this process's own database, for
        #: services whose producers write another database (``inbox=True`` routes).
        self.inboxes: dict[str, Inbox] = dict(inboxes or {})
        if broker is None and self.config.enabled:
            raise ConfigurationError("an enabled Engine needs a broker (or enabled=False)")
        self.repository = repository
        self.broker = broker
        self.routing = routing or Routing()
        self.registry = registry or HandlerRegistry(self.routing)
        if self.registry.check_payload_type is None:
            self.registry.check_payload_type = self._check_payload_type
        if self.registry.routing is not self.routing:
            raise ConfigurationError("the handler registry must use the engine's routing")
        self.publisher = Publisher(
            repository,
            self.routing,
            config=self.config.publisher,
            tracing=self.config.tracing,
            codecs=self.config.codecs,
        )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wakeups = Wakeups()
        self._lifecycle = threading.Lock()
        self._started = False
        self._stopped = False
        self._stats = StatsRecorder()
        self._step_relays: dict[str, Relay] = {}
        self._step_consumers: dict[str, tuple[Consumer, Subscription]] = {}
        self._fatal: FatalError | None = None
        self._observers = Observers([self.config.observer] if self.config.observer else [])
        self._observers.bind_backlog(self.backlog)
        self._table_sources: list[Callable[[sa.MetaData], Iterable[sa.Table]]] = []
        self._step_receipts: dict[str, tuple[ReceiptApplier, Subscription]] = {}

    # ------------------------------------------------------------------ registration

    def route(self, event_type: str, service: str) -> Route:
        """Route ``event_type`` to ``service`` (see :meth:`Routing.register`)."""
        return self.routing.register(event_type, service)

    @overload
    def register_handler(
        self,
        event_type: str,
        handler: None = None,
        *,
        transactional: Literal[True] = True,
        payload_type: Any = None,
    ) -> Callable[[TransactionalHandlerT], TransactionalHandlerT]: ...

    @overload
    def register_handler(
        self,
        event_type: str,
        handler: None = None,
        *,
        transactional: Literal[False],
        payload_type: Any = None,
    ) -> Callable[[SideEffectHandlerT], SideEffectHandlerT]: ...

    @overload
    def register_handler(
        self,
        event_type: str,
        handler: TransactionalHandlerT,
        *,
        transactional: Literal[True] = True,
        payload_type: Any = None,
    ) -> TransactionalHandlerT: ...

    @overload
    def register_handler(
        self,
        event_type: str,
        handler: SideEffectHandlerT,
        *,
        transactional: Literal[False],
        payload_type: Any = None,
    ) -> SideEffectHandlerT: ...

    def register_handler(
        self,
        event_type: str,
        handler: Callable[..., Any] | None = None,
        *,
        transactional: bool = True,
        payload_type: Any = None,
    ) -> Callable[..., Any]:
        """Register the handler of ``event_type``; usable as a decorator without ``handler``.

        A transactional handler is ``(Event[T], Connection) -> None``, a side-effect one
        (``transactional=False``) ``(Event[T]) -> None``; the shape is checked now (see
        :meth:`HandlerRegistry.register`). ``payload_type`` (or an ``Event[X]`` annotation)
        is what the payload is decoded into before the handler runs.
        Must happen before :meth:`start` for the service's consumer to be started.
        """
        if self._started and handler is not None:
            logger.warning(
                "handler for %s registered after start(): its service is served only if it "
                "already was",
                event_type,
            )
        return self.registry.register(  # type: ignore[call-overload, no-any-return]
            event_type, handler, transactional=transactional, payload_type=payload_type
        )

    handler = register_handler

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` too what the relay and consumers do (before :meth:`start`)."""
        self._observers.add(observer)

    @property
    def observers(self) -> tuple[Observer, ...]:
        """The observers told what the relay and consumers do, in the order given."""
        return self._observers.observers

    def _check_payload_type(self, event_type: str, payload_type: Any) -> None:
        self.config.codecs.for_type(event_type).check_payload_type(payload_type)

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
        check_executor(connection, required=self.config.publisher.require_connection)
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
            self._wakeups.wake(services)  # committed already
        else:
            conn = connection.connection() if isinstance(connection, Session) else connection
            self._wakeups.wake_on_commit(conn, services)
        return ids

    def _handle_inline(
        self, request: PublishRequest, connection: Connection | Session | None
    ) -> str:
        spec = self.registry.get(request.event_type)
        assert spec is not None  # checked by publish_many
        conn = connection.connection() if isinstance(connection, Session) else connection
        request = with_flow_ids(request, handled_event(conn))
        # The same round trip a relayed event makes, so a disabled engine decodes alike.
        codec = self.config.codecs.for_type(request.event_type)
        event = Event(
            event_id=request.event_id,
            outbox_id=0,
            event_type=request.event_type,
            event_version=request.event_version,
            service_name=spec.service,
            aggregate_id=request.aggregate_id,
            message_key=request.message_key,
            payload=codec.encode(request.payload),
            headers=request.headers,
            attempt=1,
            occurred_at=None,
            correlation_id=request.correlation_id,
            causation_id=request.causation_id,
        )
        if spec.payload_type is not None:
            event = decode_payload(event, spec.payload_type, self.config.codecs)
        if not spec.transactional:
            with handling(event):
                spec.func(event)
        elif conn is not None:
            if isinstance(connection, Session):
                # The handler stands in for a consumer that runs after the commit: it sees
                # what the caller's session wrote.
                connection.flush()
            self._run_inline(spec, event, conn)
        else:
            with self.repository.transaction() as own:
                self._run_inline(spec, event, own)
        return request.event_id

    def _run_inline(self, spec: HandlerSpec, event: Event, connection: Connection) -> None:
        """Run a transactional handler in the caller's transaction, checked as a consumer
        checks it (:mod:`outboxkit.consume.handler_scope`): a handler that committed or rolled back
        that transaction, or dropped unflushed ORM changes, raises to the caller."""
        func = spec.func
        if spec.session:
            factory = self.config.consumer.session_factory
            func = functools.partial(call_with_session, func, session_factory=factory)
        scope = HandlerScope(connection)
        with handling(event, connection), scope:
            func(event, connection)
        problem = scope.problem()
        if problem is not None:
            raise problem

    # ------------------------------------------------------------------ schema

    def create_schema(self, services: Iterable[str] | None = None) -> list[Route]:
        """Create the outbox tables of ``services`` and this engine's inbox tables.

        ``services`` defaults to every routed service except those consumed here through an
        inbox (their rows live in their producers' database).
        """
        if services is None:
            names = [s for s in self.routing.services() if s not in self.inboxes]
        else:
            names = list(services)
        routes = [self.routing.route_of_service(s) for s in names]
        self.repository.create_schema(routes)
        for inbox in {id(i): i for i in self.inboxes.values()}.values():
            inbox.create_schema()
        return routes

    def tables(
        self, metadata: sa.MetaData, services: Iterable[str] | None = None
    ) -> list[sa.Table]:
        """Put the outbox tables of ``services`` (default: every routed service) on ``metadata``.

        The tables are those :meth:`create_schema` creates. Call it with the application's
        ``Base.metadata`` where Alembic's ``env.py`` sets ``target_metadata``, after the
        event types are routed: autogenerate then creates the outbox tables in a migration
        and keeps them, instead of dropping them as unknown (see ``docs/alembic.md``).
        As with :meth:`create_schema`, the default leaves out services consumed here through
        an inbox (their outbox lives in the producers' database) and adds this engine's inbox
        tables. Tables of :meth:`add_table_source` sources follow. Idempotent.
        """
        if services is None:
            names = [s for s in self.routing.services() if s not in self.inboxes]
        else:
            names = list(services)
        routes = [self.routing.route_of_service(s) for s in names]
        tables = self.repository.tables(routes, metadata)
        for name in dict.fromkeys(inbox.table_name for inbox in self.inboxes.values()):
            existing = metadata.tables.get(name)
            tables.append(existing if existing is not None else inbox_table(metadata, name))
        for source in self._table_sources:
            tables.extend(source(metadata))
        return tables

    def add_table_source(self, source: Callable[[sa.MetaData], Iterable[sa.Table]]) -> None:
        """Have :meth:`tables` also put ``source(metadata)``'s tables on the metadata.

        The hook for tables other than the outbox that a feature of this engine needs in
        the application's database (a consumer-side inbox, for instance), so one call in
        Alembic's ``env.py`` covers every table outboxkit owns.
        """
        self._table_sources.append(source)

    # ------------------------------------------------------------------ what to serve

    def relay_routes(self) -> list[Route]:
        names = self.config.relay_services
        if names is None:
            # A service consumed here through an inbox is produced in another database.
            names = tuple(s for s in self.registry.services() if s not in self.inboxes)
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

    @property
    def enabled(self) -> bool:
        """Whether this engine runs threads and a broker (``EngineConfig.enabled``)."""
        return self.config.enabled

    def served_routes(self) -> list[Route]:
        """The routes this process relays or consumes, one per service, by service name."""
        by_service = {r.service: r for r in (*self.relay_routes(), *self.consumer_routes())}
        return [by_service[s] for s in sorted(by_service)]

    @property
    def fatal_error(self) -> FatalError | None:
        """The error that stopped the threads by itself (``None`` while none did).

        Set when a thread met a :class:`~outboxkit.errors.FatalError`; every thread then
        ends, and the owner should call :meth:`stop` and exit non-zero (``outboxkit
        worker`` does).
        """
        return self._fatal

    def _on_fatal(self, exc: FatalError) -> None:
        """Stop every thread after a fatal error; log it once, as one line, no traceback."""
        with self._lifecycle:
            first = self._fatal is None and not self._stopping.is_set()
            if self._fatal is None:
                self._fatal = exc
            self._stopping.set()
            self._wakeups.wake_all()
        if first:
            logger.error("outbox engine stopping on a fatal error: %s", one_line(exc))
            if self.broker is not None:
                self.broker.interrupt()
        else:
            logger.debug("another fatal error while stopping: %s", exc)

    def start(self) -> None:
        """Start the relay and consumer threads and return at once.

        A disabled engine starts nothing. Starting twice is an error; so is restarting a
        stopped engine (build a new one).
        """
        with self._lifecycle:
            if self._started:
                raise ConfigurationError("engine already started")
            if self.config.enabled:
                check_consumers(
                    self.consumer_routes(),
                    repository=self.repository,
                    registry=self.registry,
                    inboxes=self.inboxes,
                    relay_routes=self.relay_routes(),
                )
            self._started = True
            if not self.config.enabled:
                logger.info("outbox engine disabled: no relay or consumer threads")
                return
            for route in self.relay_routes():
                for n in range(self.config.relay_threads):
                    self._spawn(f"outboxkit-relay-{route.service}-{n}", self._relay_loop, route)
            for route in self.relay_routes():
                if route.inbox:  # its consumers report through receipts (inbox/receipts.py)
                    self._spawn(f"outboxkit-receipts-{route.service}", self._receipts_loop, route)
            relayed = {r.table: r.service for r in self.relay_routes()}
            if relayed and self.config.relay_threads and self.repository.notifies_new_rows:
                self._spawn("outboxkit-listener", self._listener_loop, relayed)
            for route in self.consumer_routes():
                for n in range(self.config.consumer_threads):
                    name = f"{self.config.consumer_name}-{n}"
                    self._spawn(
                        f"outboxkit-consumer-{route.service}-{n}", self._consumer_loop, route, name
                    )
            if self.config.retention is not None and self.relay_routes():
                self._spawn("outboxkit-housekeeping", self._housekeeping_loop)
            logger.info(
                "outbox engine started: relays %s, consumers %s",
                [r.service for r in self.relay_routes()],
                [r.service for r in self.consumer_routes()],
            )

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop claiming and receiving, let in-flight handlers finish, close the broker.

        Returns within about ``timeout`` seconds whatever the broker's state: connection
        attempts in progress are given up at once (:meth:`Broker.interrupt`), and closing
        the broker gets what is left of the timeout (at least
        :data:`BROKER_CLOSE_MIN_SECONDS`). Idempotent. Returns whether every thread finished
        and the broker closed within the timeout.
        """
        with self._lifecycle:
            first = not self._stopped
            self._stopped = True
            self._stopping.set()
            self._wakeups.wake_all()
        deadline = time.monotonic() + timeout
        if first:
            logger.info("outbox engine stopping (timeout %.1f s)", timeout)
            if self.broker is not None:
                self.broker.interrupt()  # nothing waits on a connection that no one needs
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        finished = not any(t.is_alive() for t in self._threads)
        if first:
            for relay in self._step_relays.values():
                relay.close()  # a prefetched claim goes back; pending marks finish
            for _, subscription in self._step_consumers.values():
                subscription.close()
            for _, subscription in self._step_receipts.values():
                subscription.close()
            if self.broker is not None:
                finished = self._close_broker(deadline) and finished
            if finished:
                logger.info("outbox engine stopped")
            else:
                alive = [t.name for t in self._threads if t.is_alive()]
                logger.warning("outbox engine stop timed out; still running: %s", alive)
        return finished

    def _close_broker(self, deadline: float) -> bool:
        """Close the broker in a helper thread, waiting until ``deadline`` at most.

        A broker's ``close`` flushes and leaves groups, which against an unreachable broker
        can take its full request timeouts; the engine's stop promise must not depend on
        that. Returns whether the broker closed in time.
        """
        broker = self.broker
        assert broker is not None

        def close() -> None:
            try:
                broker.close()
            except Exception:
                logger.exception("closing the broker failed")

        closer = threading.Thread(target=close, name="outboxkit-broker-close", daemon=True)
        closer.start()
        closer.join(max(BROKER_CLOSE_MIN_SECONDS, deadline - time.monotonic()))
        if closer.is_alive():
            logger.warning("closing the broker did not finish in time; leaving it to finish")
            return False
        return True

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
                # One step is one step: no claim prefetched, no mark left running behind it.
                relay = self._step_relays[route.service] = self._relay(route, prefetch=False)
            step = relay.run_once()
            self._stats.count_published(step.published)
            work += step.published
            if route.inbox:
                work += self._step_receipt(route)
        for route in self.consumer_routes():
            pair = self._step_consumers.get(route.service)
            if pair is None:
                self.broker.ensure_topic(route.topic, route.group)
                subscription = self.broker.subscribe(
                    route.topic, route.group, f"{self.config.consumer_name}-step"
                )
                # One step is one step: nothing received ahead of it.
                consumer = self._consumer(route, prefetch=False)
                pair = self._step_consumers[route.service] = (consumer, subscription)
            consumer, subscription = pair
            try:
                work += consumer.run_once(subscription, timeout=receive_timeout)
            except RedeliveryRequested:
                # A failed inbox attempt: subscribing again (next step) redelivers it.
                subscription.close()
                del self._step_consumers[route.service]
        return work

    def _step_receipt(self, route: Route) -> int:
        assert self.broker is not None
        pair = self._step_receipts.get(route.service)
        if pair is None:
            topic, group = receipts_topic(route), receipts_group(route)
            self.broker.ensure_topic(topic, group)
            subscription = self.broker.subscribe(topic, group, f"{self.config.consumer_name}-step")
            pair = self._step_receipts[route.service] = (
                ReceiptApplier(self.repository, route),
                subscription,
            )
        applier, subscription = pair
        return applier.run_once(subscription, timeout=0.01)

    # ------------------------------------------------------------------ observation

    def stats(self) -> EngineStats:
        """A snapshot of the counters and recent latencies."""
        return self._stats.snapshot()

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

    def thread_states(self) -> dict[str, bool]:
        """Name -> alive, for every thread this engine started (empty before :meth:`start`)."""
        return {t.name: t.is_alive() for t in self._threads}

    def health(
        self,
        *,
        max_backlog_age: float | None = None,
        timeout: float | None = HEALTH_TIMEOUT,
        liveness_only: bool = False,
    ) -> HealthReport:
        """Liveness and readiness with a reason per failing check
        (:mod:`outboxkit.observability.health`); ``liveness_only`` checks the threads alone
        (no database or broker call)."""
        return check_health(
            self, max_backlog_age=max_backlog_age, timeout=timeout, liveness_only=liveness_only
        )

    # ------------------------------------------------------------------ internals

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _relay(self, route: Route, *, prefetch: bool = True) -> Relay:
        assert self.broker is not None
        config = self.config.relay if prefetch else attrs.evolve(self.config.relay, prefetch=False)
        return Relay(
            self.repository,
            self.broker,
            route,
            config=config,
            retry_policy=self.config.retry,
            tracing=self.config.tracing,
            observer=self._observers,
        )

    def _consumer(self, route: Route, *, prefetch: bool = True) -> Consumer:
        config = self.config.consumer
        if not prefetch:
            config = attrs.evolve(config, prefetch=False)

        def on_outcome(event: Event | None, outcome: Outcome) -> None:
            self._stats.record_outcome(event, outcome)
            report_outcome(self._observers, route.service, event, outcome)

        ledger: Ledger
        inbox = self.inboxes.get(route.service)
        if inbox is not None:
            receipts = None if self.broker is None else ReceiptSender(self.broker, route)
            ledger = InboxLedger(inbox, route, self.config.retry, receipts=receipts)
        else:
            ledger = OutboxLedger(self.repository, route, self.config.retry)
        return Consumer(
            ledger,
            self.registry,
            config=config,
            on_outcome=on_outcome,
            tracing=self.config.tracing,
            codecs=self.config.codecs,
        )

    def _relay_loop(self, route: Route) -> None:
        assert self.broker is not None
        run_relay(
            self._relay(route),
            self.broker,
            stopping=self._stopping,
            wake=self._wakeups.event(route.service),
            stats=self._stats,
            on_fatal=self._on_fatal,
        )

    def _listener_loop(self, services_by_table: dict[str, str]) -> None:
        run_listener(
            self.repository,
            services_by_table,
            stopping=self._stopping,
            wakeups=self._wakeups,
            on_fatal=self._on_fatal,
        )

    def _housekeeping_loop(self) -> None:
        assert self.config.retention is not None
        run_housekeeping(
            self.repository,
            self.relay_routes(),
            self.config.retention,
            stopping=self._stopping,
        )

    def _receipts_loop(self, route: Route) -> None:
        assert self.broker is not None
        run_receipts(
            ReceiptApplier(self.repository, route),
            self.broker,
            self.config.consumer_name,
            stopping=self._stopping,
            outages=OutageLog(logger, f"receipts {route.service}"),
            on_fatal=self._on_fatal,
        )

    def _consumer_loop(self, route: Route, member: str) -> None:
        assert self.broker is not None
        run_consumer(
            self._consumer(route),
            self.broker,
            member,
            stopping=self._stopping,
            on_fatal=self._on_fatal,
        )
