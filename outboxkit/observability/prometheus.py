"""Prometheus metrics for an engine (extra ``prometheus``: ``pip install outboxkit[prometheus]``).

:class:`PrometheusMetrics` is an :class:`~outboxkit.observability.observers.Observer`: give it
to the engine and it counts what the relay and consumers do, into a ``CollectorRegistry``
you own (a new one unless you pass yours; the process-wide default registry is never touched)::

    from prometheus_client import CollectorRegistry
    from outboxkit.observability.prometheus import PrometheusMetrics, serve_metrics

    metrics = PrometheusMetrics(registry=CollectorRegistry())
    engine = Engine(repo, broker, routing, config=EngineConfig(observer=metrics))
    server = serve_metrics(metrics.registry, port=9100, engine=engine)  # /metrics, /livez, /readyz

Exported (``namespace`` defaults to ``outboxkit``):

* ``outboxkit_published_total``, ``outboxkit_consumed_total``, ``outboxkit_retried_total``,
  ``outboxkit_dead_total`` -- counters by ``service`` and ``event_type``;
* ``outboxkit_commit_to_publish_seconds`` (row created -> broker ack) and
  ``outboxkit_publish_to_consume_seconds`` (relay publish -> consumed recorded) --
  histograms by ``service``;
* ``outboxkit_pending_rows`` and ``outboxkit_oldest_pending_age_seconds`` -- gauges by
  ``service``, read from the database when scraped, plus ``outboxkit_backlog_up`` (0 when
  that read failed, so a dashboard can tell "no backlog" from "cannot see the backlog").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outboxkit.observability.health import Checkable
from outboxkit.observability.http import DEFAULT_HOST, MetricsServer, serve_metrics
from outboxkit.observability.observers import BacklogSource, Observer

logger = logging.getLogger(__name__)


class MetricsHost(Checkable, Protocol):
    """What :func:`worker_metrics` uses of an engine (:class:`~outboxkit.Engine` is one)."""

    @property
    def observers(self) -> tuple[Observer, ...]: ...

    def add_observer(self, observer: Observer) -> None: ...


#: Latency buckets in seconds: an outbox hop takes milliseconds when healthy and minutes
#: when backed up, so the buckets span 5 ms to 10 min.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

__all__ = ["DEFAULT_BUCKETS", "MetricsServer", "PrometheusMetrics", "serve_metrics"]


class PrometheusMetrics(Observer):
    """Counts, times and samples an engine's work into a Prometheus registry. Thread-safe."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "outboxkit",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("service", "event_type")

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, namespace=namespace, registry=self.registry)

        self._published = counter("published", "Events the broker acknowledged.")
        self._consumed = counter("consumed", "Events whose handler outcome was recorded.")
        self._retried = counter("retried", "Counted failed attempts; a retry was scheduled.")
        self._dead = counter("dead", "Events marked dead.")
        self._commit_to_publish = Histogram(
            "commit_to_publish_seconds",
            "Seconds from the outbox row's creation to the broker's acknowledgement.",
            ("service",),
            namespace=namespace,
            registry=self.registry,
            buckets=tuple(buckets),
        )
        self._publish_to_consume = Histogram(
            "publish_to_consume_seconds",
            "Seconds from the relay's publish to the consumed outcome being recorded.",
            ("service",),
            namespace=namespace,
            registry=self.registry,
            buckets=tuple(buckets),
        )
        self._backlog = _BacklogCollector(namespace)
        self.registry.register(self._backlog)

    def published(self, service: str, event_type: str, *, commit_to_publish: float | None) -> None:
        self._published.labels(service, event_type).inc()
        if commit_to_publish is not None:
            self._commit_to_publish.labels(service).observe(commit_to_publish)

    def consumed(self, service: str, event_type: str, *, publish_to_consume: float | None) -> None:
        self._consumed.labels(service, event_type).inc()
        if publish_to_consume is not None:
            self._publish_to_consume.labels(service).observe(publish_to_consume)

    def retried(self, service: str, event_type: str) -> None:
        self._retried.labels(service, event_type).inc()

    def dead(self, service: str, event_type: str) -> None:
        self._dead.labels(service, event_type).inc()

    def bind_backlog(self, source: BacklogSource) -> None:
        self._backlog.source = source

    def serve(
        self, port: int, *, host: str = DEFAULT_HOST, engine: Checkable | None = None
    ) -> MetricsServer:
        """Serve this registry over HTTP on ``host`` (this host only by default; see
        :func:`~outboxkit.observability.http.serve_metrics`)."""
        return serve_metrics(self.registry, port, host=host, engine=engine)


def worker_metrics(engine: MetricsHost, port: int, *, host: str = DEFAULT_HOST) -> MetricsServer:
    """Serve ``engine``'s metrics and health on ``host:port`` (``outboxkit worker
    --metrics-port``, ``--metrics-host``); this host only unless ``host`` says otherwise.

    Uses the engine's own :class:`PrometheusMetrics` when it was given one, else adds a new
    one (with its own registry) before the threads start.
    """
    metrics = next((o for o in engine.observers if isinstance(o, PrometheusMetrics)), None)
    if metrics is None:
        metrics = PrometheusMetrics()
        engine.add_observer(metrics)
    return metrics.serve(port, host=host, engine=engine)


class _BacklogCollector(Collector):
    """Reads the backlog gauges from the database at scrape time (never staler than a scrape)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.source: BacklogSource | None = None
        #: Whether the last read failed: an outage is logged when it starts and ends, not
        #: at every scrape.
        self._failing = False

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        up = GaugeMetricFamily(
            f"{self.namespace}_backlog_up", "1 when the backlog could be read from the database."
        )
        pending = GaugeMetricFamily(
            f"{self.namespace}_pending_rows", "Rows waiting to be published.", labels=["service"]
        )
        oldest = GaugeMetricFamily(
            f"{self.namespace}_oldest_pending_age_seconds",
            "Age of the oldest pending row (0 when none).",
            labels=["service"],
        )
        try:
            backlog = source()
        except Exception as exc:
            if not self._failing:
                logger.warning("metrics: cannot read the backlog (gauges left out): %s", exc)
            self._failing = True
            up.add_metric([], 0.0)
            yield up
            return
        if self._failing:
            logger.info("metrics: the backlog can be read again")
        self._failing = False
        up.add_metric([], 1.0)
        for service, facts in sorted(backlog.items()):
            pending.add_metric([service], float(facts.get("pending", 0) or 0))
            oldest.add_metric([service], float(facts.get("oldest_pending_age") or 0.0))
        yield up
        yield pending
        yield oldest
