"""The engine's named threads: started per served route, stopped together, stopped early by a
fatal error.

Threads are named ``outboxkit-relay-<service>-<n>``, ``outboxkit-consumer-<service>-<n>``,
``outboxkit-receipts-<service>`` (a relayed service consumed through an inbox elsewhere),
``outboxkit-listener`` (PostgreSQL notifications) and ``outboxkit-housekeeping`` (with
``EngineConfig.retention``). Their bodies are in :mod:`outboxkit.engine.loops`: they wait on
events (never bare sleeps), back off while the broker or database is unreachable and resume
by themselves. A :class:`~outboxkit.errors.FatalError` stops every one of them instead,
logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from outboxkit.broker import Broker
from outboxkit.engine.housekeeping import run_housekeeping
from outboxkit.engine.loops import run_consumer, run_listener, run_receipts, run_relay
from outboxkit.engine.outages import OutageLog, one_line
from outboxkit.engine.parts import Parts
from outboxkit.engine.wakeups import Wakeups
from outboxkit.errors import FatalError
from outboxkit.routing import Route

logger = logging.getLogger(__name__)

#: Least time ``stop`` gives the broker's ``close`` even when the threads used the timeout.
BROKER_CLOSE_MIN_SECONDS = 0.5


class WorkerThreads:
    """The threads of one engine. Thread-safe."""

    def __init__(self, parts: Parts, wakeups: Wakeups) -> None:
        self.parts = parts
        self.wakeups = wakeups
        #: Set to make every thread finish (stop, or a fatal error).
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fatal: FatalError | None = None
        self._lock = threading.Lock()

    @property
    def fatal_error(self) -> FatalError | None:
        return self._fatal

    def start(self, relay_routes: list[Route], consumer_routes: list[Route]) -> None:
        """Start the threads that serve these routes and return at once."""
        config = self.parts.config
        for route in relay_routes:
            for n in range(config.relay_threads):
                self._spawn(f"outboxkit-relay-{route.service}-{n}", self._relay, route)
        for route in relay_routes:
            if route.inbox:  # its consumers report through receipts (inbox/receipts.py)
                self._spawn(f"outboxkit-receipts-{route.service}", self._receipts, route)
        relayed = {r.table: r.service for r in relay_routes}
        if relayed and config.relay_threads and self.parts.repository.notifies_new_rows:
            self._spawn("outboxkit-listener", self._listener, relayed)
        for route in consumer_routes:
            for n in range(config.consumer_threads):
                member = f"{config.consumer_name}-{n}"
                self._spawn(f"outboxkit-consumer-{route.service}-{n}", self._consume, route, member)
        if config.retention is not None and relay_routes:
            self._spawn("outboxkit-housekeeping", self._housekeeping, relay_routes)

    def signal_stop(self) -> None:
        """Ask every thread to finish, and wake the ones waiting."""
        self.stopping.set()
        self.wakeups.wake_all()

    def join(self, deadline: float) -> bool:
        """Wait for every thread until ``deadline`` (``time.monotonic()``); whether all ended."""
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def states(self) -> dict[str, bool]:
        """Name -> alive, for every thread started."""
        return {t.name: t.is_alive() for t in self._threads}

    def on_fatal(self, exc: FatalError) -> None:
        """Stop every thread after a fatal error; log it once, as one line, no traceback."""
        with self._lock:
            first = self._fatal is None and not self.stopping.is_set()
            if self._fatal is None:
                self._fatal = exc
            self.signal_stop()
        if first:
            logger.error("outbox engine stopping on a fatal error: %s", one_line(exc))
            if self.parts.broker is not None:
                self.parts.broker.interrupt()
        else:
            logger.debug("another fatal error while stopping: %s", exc)

    # ------------------------------------------------------------------ the bodies

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _relay(self, route: Route) -> None:
        assert self.parts.broker is not None
        run_relay(
            self.parts.relay(route),
            self.parts.broker,
            stopping=self.stopping,
            wake=self.wakeups.event(route.service),
            stats=self.parts.stats,
            on_fatal=self.on_fatal,
        )

    def _listener(self, services_by_table: dict[str, str]) -> None:
        run_listener(
            self.parts.repository,
            services_by_table,
            stopping=self.stopping,
            wakeups=self.wakeups,
            on_fatal=self.on_fatal,
        )

    def _housekeeping(self, routes: list[Route]) -> None:
        assert self.parts.config.retention is not None
        run_housekeeping(
            self.parts.repository, routes, self.parts.config.retention, stopping=self.stopping
        )

    def _receipts(self, route: Route) -> None:
        assert self.parts.broker is not None
        run_receipts(
            self.parts.receipt_applier(route),
            self.parts.broker,
            self.parts.config.consumer_name,
            stopping=self.stopping,
            outages=OutageLog(logger, f"receipts {route.service}"),
            on_fatal=self.on_fatal,
        )

    def _consume(self, route: Route, member: str) -> None:
        assert self.parts.broker is not None
        run_consumer(
            self.parts.consumer(route),
            self.parts.broker,
            member,
            stopping=self.stopping,
            on_fatal=self.on_fatal,
        )


def close_broker(broker: Broker, deadline: float) -> bool:
    """Close ``broker`` in a helper thread, waiting until ``deadline`` at most.

    A broker's ``close`` flushes and leaves groups, which against an unreachable broker
    can take its full request timeouts; the engine's stop promise must not depend on
    that. Returns whether the broker closed in time.
    """

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
