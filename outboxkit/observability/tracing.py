"""Tracing hooks: where the publisher, the relay and the consumer let a tracer in.

The core knows no tracing library. :class:`Tracing` is a do-nothing base with three hooks,
one per step an event takes; :class:`outboxkit.observability.otel.OpenTelemetryTracing`
(extra ``otel``) implements them with OpenTelemetry, and an application may implement them
for another tracer. Pass one as ``EngineConfig(tracing=...)``.

The trace context travels **with the event**, not with the thread: the publish hook returns
headers (W3C ``traceparent``/``tracestate``) that are stored in the event shell, so they
survive the commit, the relay's claim on another host and every retry, and the relay copies
them into the broker headers. A consumer span can therefore be linked to the span that
published the event, however long the event waited in the table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from outboxkit.broker import BrokerMessage
from outboxkit.messages import Event, PublishRequest
from outboxkit.routing import Route


class Tracing:
    """Hooks around the three steps of an event; every hook of this base does nothing.

    Implementations must be thread-safe (relay and consumer threads call them at once) and
    must not raise from the hooks themselves: an exception raised *inside* a hook's block
    is the step's own failure and must propagate unchanged.
    """

    @contextlib.contextmanager
    def publishing(self, request: PublishRequest, route: Route) -> Iterator[Mapping[str, str]]:
        """Around writing ``request`` to ``route``'s table; yields headers to store with it
        (the caller keeps any header the request already has)."""
        yield {}

    @contextlib.contextmanager
    def sending(self, route: Route, messages: Sequence[BrokerMessage]) -> Iterator[None]:
        """Around the relay's broker send of ``messages`` (each carrying its event's
        trace headers)."""
        yield

    @contextlib.contextmanager
    def processing(self, route: Route, event: Event) -> Iterator[None]:
        """Around one run of ``event``'s handler (``event.headers`` holds the trace headers
        stored at publish time)."""
        yield


#: The default: no tracing at all.
NO_TRACING = Tracing()
