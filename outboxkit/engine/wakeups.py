"""Waking relays: one event per service, set when rows of that service became claimable.

A relay waits on its service's event between claims instead of sleeping out its poll
interval. The event is set when this process published rows of the service: at once when
the publisher committed its own transaction, or when the caller's transaction commits
(never on rollback: the rows are invisible to relays until then).
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Iterable

from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection


class Wakeups:
    """The per-service wake-up events of one engine. Thread-safe."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self._events_lock = threading.Lock()
        self._commit_wakes: weakref.WeakKeyDictionary[Connection, set[str]] = (
            weakref.WeakKeyDictionary()
        )
        self._listening: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._lock = threading.Lock()

    def event(self, service: str) -> threading.Event:
        """The event a relay of ``service`` waits on."""
        with self._events_lock:
            return self._events[service]

    def wake(self, services: Iterable[str]) -> None:
        """Let this process's relays of ``services`` claim now instead of after their wait."""
        for service in services:
            self.event(service).set()

    def wake_all(self) -> None:
        """Wake every relay (used on stop, so none sleeps out its interval)."""
        with self._events_lock:
            events = list(self._events.values())
        for event in events:
            event.set()

    def wake_on_commit(self, connection: Connection, services: set[str]) -> None:
        """Wake the relays of ``services`` when ``connection``'s transaction commits.

        Listeners are attached once per connection and consult the pending set, so a
        connection reused from the pool does not pile up listeners.
        """
        with self._lock:
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
        with self._lock:
            woken = self._commit_wakes.pop(connection, set())
        self.wake(woken)

    def _on_rollback(self, connection: Connection) -> None:
        with self._lock:
            self._commit_wakes.pop(connection, None)
