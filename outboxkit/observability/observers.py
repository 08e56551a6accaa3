"""Observers: what the relay and consumers tell exporters (metrics, dashboards, tests).

The core calls a small :class:`Observer` at the few points where an event changes hands:
published (the broker acknowledged it), consumed, retried, dead. The default observer does
nothing, so the core imports no metrics library;
:class:`outboxkit.observability.prometheus.PrometheusMetrics` is one observer, and any other
exporter plugs in the same way::

    engine = Engine(repo, broker, routing, config=EngineConfig(observer=MyObserver()))
    engine.add_observer(another)          # before start(); several observers fan out

Gauges of the backlog (pending rows, age of the oldest) are read, not pushed: the engine
hands each observer a :data:`BacklogSource` through :meth:`Observer.bind_backlog`, which an
exporter calls when it is scraped, so the value is never staler than the scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from outboxkit.messages import Event, Outcome

logger = logging.getLogger(__name__)

#: Returns, per relayed service, ``{"pending": n, ..., "oldest_pending_age": s | None}``
#: (the shape of :meth:`outboxkit.Engine.backlog`); may raise when the database is down.
BacklogSource = Callable[[], Mapping[str, Mapping[str, Any]]]

#: Event type reported when a message could not be decoded far enough to know it.
UNKNOWN_EVENT_TYPE = "unknown"


class Observer:
    """Receives what the engine's threads did; every method does nothing by default.

    Contract for subclasses: methods are called from relay and consumer threads at once, so
    they must be thread-safe, and they run on the hot path, so they must be quick (count,
    don't do I/O). An exception raised here is logged and swallowed by the engine: a
    broken exporter never stops events. Latencies are in seconds, ``None`` when unknown.
    """

    def published(self, service: str, event_type: str, *, commit_to_publish: float | None) -> None:
        """The broker acknowledged one event; ``commit_to_publish`` is row creation -> ack."""

    def consumed(self, service: str, event_type: str, *, publish_to_consume: float | None) -> None:
        """A handler's outcome ``consumed`` was recorded; latency is relay publish -> now."""

    def retried(self, service: str, event_type: str) -> None:
        """One counted failed attempt (handler error or broker rejection); a retry is due."""

    def dead(self, service: str, event_type: str) -> None:
        """The event was marked ``dead`` (exhausted, permanent error, undecodable)."""

    def bind_backlog(self, source: BacklogSource) -> None:
        """Called once by the engine this observer is given to, with its backlog reader."""


class Observers(Observer):
    """Fans every call out to several observers; one that raises is logged, not fatal."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self._observers: tuple[Observer, ...] = tuple(observers)
        self._source: BacklogSource | None = None
        self._lock = threading.Lock()

    @property
    def observers(self) -> tuple[Observer, ...]:
        return self._observers

    def add(self, observer: Observer) -> None:
        """Add ``observer`` (bound to the backlog source already given, if any)."""
        with self._lock:
            self._observers = (*self._observers, observer)
            source = self._source
        if source is not None:
            self._call(observer.bind_backlog, source)

    def published(self, service: str, event_type: str, *, commit_to_publish: float | None) -> None:
        for observer in self._observers:
            self._call(observer.published, service, event_type, commit_to_publish=commit_to_publish)

    def consumed(self, service: str, event_type: str, *, publish_to_consume: float | None) -> None:
        for observer in self._observers:
            self._call(
                observer.consumed, service, event_type, publish_to_consume=publish_to_consume
            )

    def retried(self, service: str, event_type: str) -> None:
        for observer in self._observers:
            self._call(observer.retried, service, event_type)

    def dead(self, service: str, event_type: str) -> None:
        for observer in self._observers:
            self._call(observer.dead, service, event_type)

    def bind_backlog(self, source: BacklogSource) -> None:
        with self._lock:
            self._source = source
            observers = self._observers
        for observer in observers:
            self._call(observer.bind_backlog, source)

    @staticmethod
    def _call(method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            logger.exception("observer %r failed; events go on", method)


def report_outcome(observer: Observer, service: str, event: Event | None, outcome: Outcome) -> None:
    """Tell ``observer`` about one consumer outcome (duplicates and skips are not reported)."""
    event_type = event.event_type if event is not None else UNKNOWN_EVENT_TYPE
    if outcome is Outcome.CONSUMED:
        latency = None
        if event is not None and event.published_at:
            latency = _seconds_since_iso(event.published_at)
        observer.consumed(service, event_type, publish_to_consume=_not_negative(latency))
    elif outcome is Outcome.RETRY:
        observer.retried(service, event_type)
    elif outcome is Outcome.DEAD:
        observer.dead(service, event_type)


def seconds_between(start: datetime | None, end: datetime) -> float | None:
    """``end - start`` in seconds (naive datetimes are UTC), never negative; ``None`` if unknown.

    Row timestamps come from the database server's clock and acks from this process's: a
    small skew could make a latency negative, which a histogram must not see.
    """
    if start is None:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    return _not_negative((end - start).total_seconds())


def _seconds_since_iso(iso: str) -> float | None:
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return seconds_between(moment, datetime.now(timezone.utc))


def _not_negative(value: float | None) -> float | None:
    return None if value is None else max(0.0, value)
