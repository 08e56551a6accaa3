"""Seeing what the engine does: observers, tracing, logs, metrics, health.

* :mod:`~outboxkit.observability.observers`: the :class:`Observer` hooks the relay and the
  consumers call;
* :mod:`~outboxkit.observability.tracing` and :mod:`~outboxkit.observability.otel`: trace
  context through the outbox (OpenTelemetry with the ``otel`` extra);
* :mod:`~outboxkit.observability.prometheus` and :mod:`~outboxkit.observability.http`:
  Prometheus metrics (extra ``prometheus``) and the worker's HTTP endpoint;
* :mod:`~outboxkit.observability.health`: liveness and readiness;
* :mod:`~outboxkit.observability.logs`: what log lines carry, and what they never carry.

Nothing here is imported by ``import outboxkit.observability``: the OpenTelemetry and
Prometheus modules need their extras.
"""
