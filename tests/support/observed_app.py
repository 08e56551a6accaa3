"""An application for the ``outboxkit worker --metrics-port`` and ``outboxkit health`` tests.

Like a real application it reads its settings from the environment (run in a subprocess):
``OBSERVED_APP_DB`` (SQLAlchemy URL), ``OBSERVED_APP_BROKER`` (Redis URL) and
``OBSERVED_APP_UNIQUE`` (the test's unique suffix for tables and streams).
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.messages import Event
from outboxkit.routing import Routing
from tests.support.engine import fast_config, unique_routing

SERVICE = "orders"
EVENT_TYPE = "order.placed"


def routing(unique: str) -> Routing:
    routing = unique_routing(unique, SERVICE)
    routing.register(EVENT_TYPE, SERVICE)
    return routing


def build() -> Engine:
    """The factory ``outboxkit worker tests.support.observed_app:build`` calls."""
    engine = Engine(
        SqlRepository(sa.create_engine(os.environ["OBSERVED_APP_DB"])),
        RedisStreamsBroker.from_url(os.environ["OBSERVED_APP_BROKER"]),
        routing(os.environ["OBSERVED_APP_UNIQUE"]),
        config=fast_config(),
    )

    @engine.register_handler(EVENT_TYPE)
    def place(event: Event, connection: Connection) -> None:
        """Nothing to do: the tests count outcomes, not effects."""

    return engine
