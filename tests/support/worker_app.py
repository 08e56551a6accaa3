"""A tiny application for the ``outboxkit worker`` tests (run in a subprocess).

Like a real application it reads its settings from the environment: the SQLite file and a
folder where the handler drops marker files the test waits for.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository, create_sqlite_engine
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine
from outboxkit.messages import Event
from outboxkit.routing import Routing

SERVICE = "jobs"
EVENT_TYPE = "job.requested"


def routing() -> Routing:
    routing = Routing()
    routing.register(EVENT_TYPE, SERVICE)
    return routing


def build() -> Engine:
    """The factory ``outboxkit worker tests.support.worker_app:build`` calls."""
    database = os.environ["WORKER_APP_DB"]
    markers = Path(os.environ["WORKER_APP_MARKERS"])
    engine = Engine(
        SqlRepository(create_sqlite_engine(f"sqlite:///{database}")), MemoryBroker(), routing()
    )

    @engine.register_handler(EVENT_TYPE)
    def run_job(event: Event, connection: Connection) -> None:
        (markers / f"{event.event_id}.started").touch()
        time.sleep(float(event.payload.get("seconds", 0)))
        (markers / f"{event.event_id}.finished").touch()

    return engine
