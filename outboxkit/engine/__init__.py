"""The engine: routes, handlers, the publisher, and the named threads that relay and consume.

Typical use::

    routing = Routing()
    routing.register("order.placed", "orders")
    engine = Engine(SqlRepository(db), KafkaBroker(KafkaConfig.from_bootstrap("k:9092")), routing)

    @engine.register_handler("order.placed")
    def ship(event, connection): ...

    # request code, inside the caller's transaction:
    engine.publish(PublishRequest(event_type="order.placed", payload={...}), connection=conn)

    # worker process:
    engine.start(); ...; engine.stop(timeout=30)

One concern per module: :mod:`~outboxkit.engine.core` (the :class:`Engine`, a facade),
:mod:`~outboxkit.engine.config` (what it can be told), :mod:`~outboxkit.engine.parts` (the
workers of a route), :mod:`~outboxkit.engine.threads` (the named threads and a fatal error's
stop), :mod:`~outboxkit.engine.loops` (their bodies), :mod:`~outboxkit.engine.outages`
(logging an outage once), :mod:`~outboxkit.engine.steps` (:meth:`Engine.run_once`),
:mod:`~outboxkit.engine.inline` (handling at publish when disabled),
:mod:`~outboxkit.engine.wakeups` (waking relays when a publishing transaction commits),
:mod:`~outboxkit.engine.placement` (the checks before consumers start),
:mod:`~outboxkit.engine.housekeeping` (retention, one worker at a time) and
:mod:`~outboxkit.engine.stats` (what it counted).
"""

from outboxkit.engine.config import EngineConfig, default_consumer_name
from outboxkit.engine.core import Engine
from outboxkit.engine.stats import LATENCY_SAMPLES, EngineStats

__all__ = ["LATENCY_SAMPLES", "Engine", "EngineConfig", "EngineStats", "default_consumer_name"]
