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

The package holds one concern per module: :mod:`~outboxkit.engine.config` (what it can be
told), :mod:`~outboxkit.engine.stats` (what it counted), :mod:`~outboxkit.engine.wakeups`
(waking relays when a publishing transaction commits), :mod:`~outboxkit.engine.loops` (the
relay and consumer thread bodies) and :mod:`~outboxkit.engine.core` (the :class:`Engine`).
"""

from outboxkit.engine.config import EngineConfig, default_consumer_name
from outboxkit.engine.core import Engine
from outboxkit.engine.stats import LATENCY_SAMPLES, EngineStats

__all__ = ["LATENCY_SAMPLES", "Engine", "EngineConfig", "EngineStats", "default_consumer_name"]
