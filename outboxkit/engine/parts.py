"""The workers of one service, built from the engine's pieces: a relay, a consumer (with the
ledger its route calls for), a receipt applier. Shared by the threads and by
:meth:`~outboxkit.Engine.run_once`, so both run the same configuration.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from outboxkit.broker import Broker
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.ledger import Ledger
from outboxkit.consume.outbox_ledger import OutboxLedger
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.engine.config import EngineConfig
from outboxkit.engine.stats import StatsRecorder
from outboxkit.inbox.base import Inbox
from outboxkit.inbox.ledger import InboxLedger
from outboxkit.inbox.receipts import ReceiptApplier, ReceiptSender
from outboxkit.messages import Event, Outcome
from outboxkit.observability.observers import Observers, report_outcome
from outboxkit.relay.relay import Relay
from outboxkit.routing import Route
from outboxkit.store import Repository


class Parts:
    """Builds the workers of a route. Holds no state of its own beyond the pieces."""

    def __init__(
        self,
        *,
        repository: Repository,
        broker: Broker | None,
        registry: HandlerRegistry,
        config: EngineConfig,
        inboxes: Mapping[str, Inbox],
        stats: StatsRecorder,
        observers: Observers,
    ) -> None:
        self.repository = repository
        self.broker = broker
        self.registry = registry
        self.config = config
        self.inboxes = inboxes
        self.stats = stats
        self.observers = observers

    def relay(self, route: Route, *, prefetch: bool = True) -> Relay:
        assert self.broker is not None
        config = self.config.relay if prefetch else attrs.evolve(self.config.relay, prefetch=False)
        return Relay(
            self.repository,
            self.broker,
            route,
            config=config,
            retry_policy=self.config.retry,
            tracing=self.config.tracing,
            observer=self.observers,
        )

    def consumer(self, route: Route, *, prefetch: bool = True) -> Consumer:
        """The consumer of ``route``: outcomes on the outbox row, or in the route's inbox."""
        config = self.config.consumer
        if not prefetch:
            config = attrs.evolve(config, prefetch=False)

        def on_outcome(event: Event | None, outcome: Outcome) -> None:
            self.stats.record_outcome(event, outcome)
            report_outcome(self.observers, route.service, event, outcome)

        ledger: Ledger
        inbox = self.inboxes.get(route.service)
        if inbox is not None:
            receipts = None if self.broker is None else ReceiptSender(self.broker, route)
            ledger = InboxLedger(inbox, route, self.config.retry, receipts=receipts)
        else:
            ledger = OutboxLedger(self.repository, route, self.config.retry)
        return Consumer(
            ledger,
            self.registry,
            config=config,
            on_outcome=on_outcome,
            tracing=self.config.tracing,
            codecs=self.config.codecs,
        )

    def receipt_applier(self, route: Route) -> ReceiptApplier:
        return ReceiptApplier(self.repository, route)
