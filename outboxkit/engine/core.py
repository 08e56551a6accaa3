"""The :class:`Engine`: one object a process builds, holding its routes, handlers, publisher and
threads. A facade over the pieces of this package: :mod:`~outboxkit.engine.parts` (the workers
of a route), :mod:`~outboxkit.engine.threads` (the threads that run them),
:mod:`~outboxkit.engine.steps` (:meth:`Engine.run_once`), :mod:`~outboxkit.engine.inline`
(handling at publish when the engine is disabled) and :mod:`~outboxkit.engine.wakeups`.

:meth:`Engine.stop` stops claiming and receiving, lets in-flight handlers finish, then closes
the broker, all within its timeout whatever state the broker is in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.broker import Broker
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.engine.config import EngineConfig
from outboxkit.engine.inline import InlineHandling
from outboxkit.engine.parts import Parts
from outboxkit.engine.placement import check_consumers
from outboxkit.engine.stats import EngineStats, StatsRecorder
from outboxkit.engine.steps import Steps
from outboxkit.engine.threads import WorkerThreads, close_broker
from outboxkit.engine.wakeups import Wakeups
from outboxkit.errors import ConfigurationError, FatalError
from outboxkit.inbox.base import Inbox
from outboxkit.inbox.schema import inbox_table
from outboxkit.messages import PublishRequest
from outboxkit.observability.health import DEFAULT_TIMEOUT as HEALTH_TIMEOUT
from outboxkit.observability.health import HealthReport, check_health
from outboxkit.observability.observers import Observer, Observers
from outboxkit.publish.checks import check_executor
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route, Routing
from outboxkit.store import Repository

logger = logging.getLogger(__name__)


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
        #: Register the handler of an event type; without a handler, a decorator::
        #:
        #:     @engine.register_handler("order.placed")
        #:     def ship(event: Event[OrderPlaced], connection: Connection) -> None: ...
        #:
        #: A transactional handler is ``(Event[T], Connection) -> None`` or
        #: ``(Event[T], Session) -> None``, a side-effect one (``transactional=False``)
        #: ``(Event[T]) -> None``; the shape is checked now and typed for mypy, and
        #: ``payload_type`` (or an ``Event[X]`` annotation) is what the payload is decoded
        #: into (:meth:`HandlerRegistry.register`). Register before :meth:`start` for the
        #: service's consumer to be started.
        self.register_handler = self.registry.register
        self.publisher = Publisher(
            repository,
            self.routing,
            config=self.config.publisher,
            tracing=self.config.tracing,
            codecs=self.config.codecs,
        )
        self._inline = InlineHandling(
            self.registry,
            repository,
            codecs=self.config.codecs,
            consumer=self.config.consumer,
        )
        self._wakeups = Wakeups()
        self._lifecycle = threading.Lock()
        self._started = False
        self._stopped = False
        self._stats = StatsRecorder()
        self._observers = Observers([self.config.observer] if self.config.observer else [])
        self._observers.bind_backlog(self.backlog)
        self._table_sources: list[Callable[[sa.MetaData], Iterable[sa.Table]]] = []
        parts = Parts(
            repository=repository,
            broker=broker,
            registry=self.registry,
            config=self.config,
            inboxes=self.inboxes,
            stats=self._stats,
            observers=self._observers,
        )
        self._threads = WorkerThreads(parts, self._wakeups)
        self._steps = (
            None
            if broker is None
            else Steps(parts, broker, f"{self.config.consumer_name}-step", self._stats)
        )

    # ------------------------------------------------------------------ registration

    def route(self, event_type: str, service: str) -> Route:
        """Route ``event_type`` to ``service`` (see :meth:`Routing.register`)."""
        return self.routing.register(event_type, service)

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
            return self._inline.handle_many(requests, connection)
        ids = self.publisher.publish_many(requests, connection=connection)
        services = {self.routing.service_of(r.event_type) for r in requests}
        if connection is None:
            self._wakeups.wake(services)  # committed already
        else:
            conn = connection.connection() if isinstance(connection, Session) else connection
            self._wakeups.wake_on_commit(conn, services)
        return ids

    # ------------------------------------------------------------------ schema

    def _default_routes(self, services: Iterable[str] | None) -> list[Route]:
        """``services``' routes; by default every routed service except those consumed here
        through an inbox (their rows live in their producers' database)."""
        if services is None:
            names = [s for s in self.routing.services() if s not in self.inboxes]
        else:
            names = list(services)
        return [self.routing.route_of_service(s) for s in names]

    def create_schema(self, services: Iterable[str] | None = None) -> list[Route]:
        """Create the outbox tables of ``services`` and this engine's inbox tables.

        ``services`` defaults to every routed service except those consumed here through an
        inbox (their rows live in their producers' database).
        """
        routes = self._default_routes(services)
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
        tables = self.repository.tables(self._default_routes(services), metadata)
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
        """The services this process relays (``EngineConfig.relay_services``, by default
        those it has handlers for, except those it consumes through an inbox)."""
        names = self.config.relay_services
        if names is None:
            # A service consumed here through an inbox is produced in another database.
            names = tuple(s for s in self.registry.services() if s not in self.inboxes)
        return [self.routing.route_of_service(s) for s in names]

    def consumer_routes(self) -> list[Route]:
        """The services this process consumes (``EngineConfig.consumer_services``, by
        default those it has handlers for)."""
        names = self.config.consumer_services
        if names is None:
            names = tuple(self.registry.services())
        return [self.routing.route_of_service(s) for s in names]

    def served_routes(self) -> list[Route]:
        """The routes this process relays or consumes, one per service, by service name."""
        by_service = {r.service: r for r in (*self.relay_routes(), *self.consumer_routes())}
        return [by_service[s] for s in sorted(by_service)]

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    @property
    def enabled(self) -> bool:
        """Whether this engine runs threads and a broker (``EngineConfig.enabled``)."""
        return self.config.enabled

    @property
    def fatal_error(self) -> FatalError | None:
        """The error that stopped the threads by itself (``None`` while none did).

        Set when a thread met a :class:`~outboxkit.errors.FatalError`; every thread then
        ends, and the owner should call :meth:`stop` and exit non-zero (``outboxkit
        worker`` does).
        """
        return self._threads.fatal_error

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
            self.registry.mark_started()
            if not self.config.enabled:
                logger.info("outbox engine disabled: no relay or consumer threads")
                return
            self._threads.start(self.relay_routes(), self.consumer_routes())
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
        :data:`~outboxkit.engine.threads.BROKER_CLOSE_MIN_SECONDS`). Idempotent. Returns
        whether every thread finished and the broker closed within the timeout.
        """
        with self._lifecycle:
            first = not self._stopped
            self._stopped = True
            self._threads.signal_stop()
        deadline = time.monotonic() + timeout
        if first:
            logger.info("outbox engine stopping (timeout %.1f s)", timeout)
            if self.broker is not None:
                self.broker.interrupt()  # nothing waits on a connection that no one needs
        finished = self._threads.join(deadline)
        if first:
            if self._steps is not None:
                self._steps.close()
            if self.broker is not None:
                finished = close_broker(self.broker, deadline) and finished
            if finished:
                logger.info("outbox engine stopped")
            else:
                alive = [name for name, up in self._threads.states().items() if up]
                logger.warning("outbox engine stop timed out; still running: %s", alive)
        return finished

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def run_once(self, *, receive_timeout: float = 0.5) -> int:
        """One relay step and one consume step for every served service, in this thread.

        Returns the number of rows published plus deliveries handled. Broker or database
        outages propagate, unlike in the threads, so a test sees them (see
        :mod:`~outboxkit.engine.steps`).
        """
        if self._steps is None or not self.config.enabled:
            return 0
        return self._steps.run_once(self.relay_routes(), self.consumer_routes(), receive_timeout)

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
        return self._threads.states()

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
