"""What an :class:`~outboxkit.engine.Engine` can be told: one frozen value with working defaults."""

from __future__ import annotations

import os
import socket

import attrs

from outboxkit.admin.retention import RetentionPolicy
from outboxkit.consume.config import ConsumerConfig
from outboxkit.observability.observers import Observer
from outboxkit.observability.tracing import NO_TRACING, Tracing
from outboxkit.publish.publisher import PublisherConfig
from outboxkit.relay.relay import RelayConfig
from outboxkit.retry import RetryPolicy
from outboxkit.wire.payloads import PayloadCodecs


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
    #: Delete old final rows in a housekeeping thread (one worker at a time, see
    #: :mod:`outboxkit.engine.housekeeping`); ``None`` (the default) keeps every row.
    retention: RetentionPolicy | None = None
    #: ``False`` mirrors the Go ``kafka.enabled=false`` fallback: no threads, no broker,
    #: and :meth:`Engine.publish` runs the local handler at once in the caller's transaction.
    enabled: bool = True
    #: Tracing hooks (:class:`outboxkit.observability.otel.OpenTelemetryTracing` with the
    #: ``otel`` extra).
    tracing: Tracing = NO_TRACING
    #: Told what the relay and consumers did (e.g.
    #: :class:`outboxkit.observability.prometheus.PrometheusMetrics`); ``None`` observes
    #: nothing. More can be added with :meth:`Engine.add_observer`.
    observer: Observer | None = attrs.field(default=None, eq=False)
    #: How payloads become JSON on publish and typed objects on consume; one codec for
    #: every event type unless ``PayloadCodecs(by_event_type=...)`` names others.
    codecs: PayloadCodecs = attrs.field(factory=PayloadCodecs)
