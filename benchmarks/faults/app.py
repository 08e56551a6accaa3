"""The worker application: ``python -m outboxkit worker benchmarks.faults.app:build``.

Like a real application it reads its settings from the environment (``OKF_*``, written by
:meth:`~benchmarks.faults.settings.RunSpec.environment`); ``OKF_ROLE`` says whether this
process relays, consumes or both. The handler is transactional and writes one row per
effect into a business table with no unique constraint, so an effect applied twice shows
as two rows. Before doing anything it appends the invocation to a file of its own (outside
the transaction, unbuffered), so "delivered" counts every call, even one killed midway.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from benchmarks.faults.settings import EVENT_TYPE, RunSpec, engine_config
from benchmarks.faults.tagging import tagged_engine
from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.engine import Engine
from outboxkit.errors import PermanentError
from outboxkit.messages import Event


def effects_table(name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """One row per applied effect. Deliberately no unique key: duplicates must be visible."""
    return sa.Table(
        name,
        metadata or sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("outbox_id", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )


def orders_table(name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """The publisher's business write, committed in the same transaction as the event."""
    return sa.Table(
        name,
        metadata or sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(200), nullable=False),
    )


def build_broker(spec: RunSpec) -> Broker:
    if spec.broker == "redis":
        from benchmarks.faults.settings import CLAIM_IDLE_SECONDS, CLAIM_INTERVAL_SECONDS
        from outboxkit.brokers.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker.from_url(
            f"redis://{spec.broker_address}/0",
            claim_idle_seconds=CLAIM_IDLE_SECONDS,
            claim_interval_seconds=CLAIM_INTERVAL_SECONDS,
        )
    from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

    return KafkaBroker(KafkaConfig.from_bootstrap(spec.broker_address))


class InvocationLog:
    """Appends ``event_id outbox_id attempt`` per handler call to this process's file."""

    def __init__(self, workdir: str) -> None:
        self.path = Path(workdir) / f"invocations-{os.getpid()}.log"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, event: Event) -> None:
        # One write(2) per line on an O_APPEND fd: survives kill -9, never interleaves.
        line = f"{_clean(event.event_id)}\t{event.outbox_id}\t{event.attempt}\n"
        os.write(self._fd, line.encode("utf-8", "replace"))


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")[:200] or "-"


def _number(value: Any, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def build() -> Engine:
    """The factory ``outboxkit worker`` calls."""
    spec = RunSpec.from_environment()
    role = os.environ.get("OKF_ROLE", "both")
    db = tagged_engine(
        spec.database_url, application_name=spec.application_name, workdir=spec.workdir
    )
    engine = Engine(
        SqlRepository(db, owns_engine=True),
        build_broker(spec),
        spec.routing(),
        config=engine_config(role),
    )
    effects = effects_table(spec.effects_table)
    log = InvocationLog(spec.workdir)

    @engine.register_handler(EVENT_TYPE)
    def apply(event: Event, connection: Connection) -> None:
        log.record(event)
        payload = event.payload if isinstance(event.payload, dict) else {}
        seq = int(_number(payload.get("seq"), 0))
        pause = min(_number(payload.get("sleep"), 0.0), 60.0)
        if seq % spec.sleep_every == 0:
            pause += spec.handler_sleep
        if pause > 0:
            time.sleep(pause)
        if payload.get("poison"):
            raise PermanentError(f"poisoned payload of event {event.event_id}")
        connection.execute(
            effects.insert().values(
                event_id=_clean(event.event_id),
                outbox_id=event.outbox_id,
                seq=int(_number(payload.get("seq"), -1)),
                pid=os.getpid(),
            )
        )

    return engine
