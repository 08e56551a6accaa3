"""Knobs of a fault run, and the names and engine settings every process of a run shares.

The workers and the publisher are separate processes: they learn the run's names and
settings from environment variables (``OKF_*``), which :meth:`RunSpec.environment` writes and
:meth:`RunSpec.from_environment` reads back, so the two sides cannot disagree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from outboxkit.consume.config import ConsumerConfig
from outboxkit.engine import EngineConfig
from outboxkit.relay.relay import RelayConfig
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Routing, ServiceCatalog

SERVICE = "faults"
EVENT_TYPE = "fault.event"

#: A published-but-never-consumed row is republished after this many seconds. Short, so a
#: broker restarted empty is rescued within a scenario (the library default is 300 s).
REPUBLISH_AFTER = 8.0
#: How often each relay looks for such rows (library default 30 s).
REPUBLISH_INTERVAL = 2.0
#: Redis Streams: a pending entry idle this long is taken over by another member (library
#: default 60 s), and members look for such entries this often (default 5 s).
CLAIM_IDLE_SECONDS = 3.0
CLAIM_INTERVAL_SECONDS = 1.0
#: A relay's claim protects its rows this long (library default 30 s).
LEASE_SECONDS = 10.0
#: Every poison_every-th event (offset 13) carries a payload the handler rejects.
POISON_EVERY = 97
POISON_OFFSET = 13

DATABASES = ("pg", "mariadb")
BROKERS = ("kafka", "redis")

DEFAULT_URLS = {
    "pg": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}


def engine_config(role: str) -> EngineConfig:
    """The engine settings of a worker; ``role`` is ``both``, ``relay`` or ``consume``."""
    return EngineConfig(
        relay=RelayConfig(
            batch_size=50,
            lease_seconds=LEASE_SECONDS,
            idle_interval=0.2,
            outage_backoff=0.5,
            outage_backoff_max=3.0,
            republish_after=REPUBLISH_AFTER,
            republish_interval=REPUBLISH_INTERVAL,
        ),
        consumer=ConsumerConfig(receive_timeout=0.5, outage_backoff=0.5, outage_backoff_max=3.0),
        retry=RetryPolicy(base_delay=0.5, max_delay=5.0),
        relay_threads=0 if role == "consume" else 1,
        consumer_threads=0 if role == "relay" else 1,
    )


#: Runs of more events than this spread ``handler_sleep`` over fewer of them.
SLEEP_BUDGET_EVENTS = 5_000


def sleep_every(events: int) -> int:
    """Which events' handlers sleep ``handler_sleep``: every one up to SLEEP_BUDGET_EVENTS."""
    return max(1, -(-events // SLEEP_BUDGET_EVENTS))  # rounded up: never over the budget


def is_poison(seq: int) -> bool:
    """Whether event number ``seq`` is deliberately poisoned (the only allowed dead)."""
    return seq % POISON_EVERY == POISON_OFFSET


@attrs.frozen(kw_only=True)
class RunSpec:
    """What every process of one scenario run must agree on."""

    run_id: str
    database_url: str
    broker: str = attrs.field(validator=attrs.validators.in_(BROKERS))
    broker_address: str
    workdir: str
    #: Extra seconds a handler call sleeps (so a kill lands mid-handler, or a backlog
    #: builds up), on every ``sleep_every``-th event.
    handler_sleep: float = 0.0
    #: 1 up to SLEEP_BUDGET_EVENTS events; above, the handlers' total sleep stays that of
    #: a SLEEP_BUDGET_EVENTS run, so a 100k soak is not days of sleeping handlers.
    sleep_every: int = 1
    events: int = 0
    rate: float = 100.0
    #: Every slow_every-th event (offset 5) sleeps slow_seconds in its handler; 0 = none.
    slow_every: int = 0
    slow_seconds: float = 0.0

    def is_slow(self, seq: int) -> bool:
        """Whether event number ``seq`` sleeps ``slow_seconds`` in its handler (never a
        poisoned one: poison comes first)."""
        return bool(self.slow_every) and seq % self.slow_every == 5 and not is_poison(seq)

    @property
    def namespace(self) -> str:
        return f"okf-{self.run_id}"

    @property
    def outbox_table(self) -> str:
        return f"okf_{self.run_id}_outbox"

    @property
    def effects_table(self) -> str:
        return f"okf_{self.run_id}_effects"

    @property
    def orders_table(self) -> str:
        return f"okf_{self.run_id}_orders"

    @property
    def application_name(self) -> str:
        """Set on every database connection of the run's workers and publisher."""
        return f"okf-{self.run_id}"

    def routing(self) -> Routing:
        catalog = ServiceCatalog(namespace=self.namespace)
        catalog.configure(SERVICE, table=self.outbox_table)
        routing = Routing(catalog)
        routing.register(EVENT_TYPE, SERVICE)
        return routing

    def environment(self) -> dict[str, str]:
        return {f"OKF_{f.name.upper()}": str(getattr(self, f.name)) for f in attrs.fields(RunSpec)}

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> RunSpec:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field in attrs.fields(RunSpec):
            raw = env[f"OKF_{field.name.upper()}"]
            kind = (
                field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
            )
            if kind == "int":
                values[field.name] = int(raw)
            elif kind == "float":
                values[field.name] = float(raw)
            else:
                values[field.name] = raw
        return cls(**values)  # type: ignore[arg-type]
