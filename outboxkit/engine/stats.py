"""Counters and recent latencies of one engine, kept thread-safe for :meth:`Engine.stats`."""

from __future__ import annotations

import collections
import threading
from datetime import datetime, timezone

import attrs

from outboxkit.messages import Event, Outcome

#: How many recent end-to-end latencies :class:`EngineStats` keeps for percentiles.
LATENCY_SAMPLES = 100_000


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


class StatsRecorder:
    """Collects what the engine's threads did; :meth:`snapshot` is a consistent copy."""

    def __init__(self) -> None:
        self._stats = EngineStats()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self._lock = threading.Lock()

    def snapshot(self) -> EngineStats:
        with self._lock:
            return attrs.evolve(self._stats, latencies=list(self._latencies))

    def record_outcome(self, event: Event | None, outcome: Outcome) -> None:
        """Count one delivery's outcome; a consumed event adds its publish-to-consume latency."""
        latency = None
        if outcome is Outcome.CONSUMED and event is not None and event.occurred_at:
            latency = seconds_since(event.occurred_at)
        with self._lock:
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

    def count_published(self, published: int) -> None:
        if published:
            with self._lock:
                self._stats.published += published


def seconds_since(iso: str) -> float | None:
    """Seconds from the ISO-8601 instant ``iso`` (naive = UTC) to now; ``None`` if unparsable."""
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - moment).total_seconds()
