"""The services of one benchmark run, opened once and cleaned up at the end.

Databases come from the test-suite addresses (:mod:`outboxkit.testing.services`); Kafka is
a Tansu the run starts itself (memory storage, so stopping it deletes every topic) unless
``OUTBOXKIT_TEST_KAFKA_BOOTSTRAP`` points at another broker, whose topics are then deleted.
Redis streams created by the run are deleted at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import sqlalchemy as sa

from benchmarks.common import progress
from outboxkit.testing import services

#: Database labels used in figure names, and how to reach each server.
DATABASES = {"PG": services.postgres_url, "MariaDB": services.mysql_url}


@attrs.define
class Env:
    """Open engines, the Redis URL and a lazily started Kafka-protocol broker."""

    quick: bool
    dbs: dict[str, sa.Engine] = attrs.field(factory=dict)
    redis_url: str = attrs.field(factory=services.redis_url)
    _tansu: Any = None
    _bootstrap: str | None = None
    _streams: set[str] = attrs.field(factory=set)
    _topics: set[str] = attrs.field(factory=set)

    def db(self, label: str) -> sa.Engine:
        if label not in self.dbs:
            self.dbs[label] = sa.create_engine(DATABASES[label](), pool_size=10)
        return self.dbs[label]

    def db_url(self, label: str) -> str:
        return DATABASES[label]()

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap address, starting Tansu on first use."""
        if self._bootstrap is None:
            external = services.external_kafka_bootstrap()
            if external is not None:
                self._bootstrap = external
            else:
                from outboxkit.testing.tansu import TansuServer

                progress("starting Tansu (Kafka-protocol broker, memory storage)")
                self._tansu = TansuServer().start()
                self._bootstrap = self._tansu.bootstrap
        return self._bootstrap

    def created_stream(self, *names: str) -> None:
        self._streams.update(names)

    def created_topic(self, *names: str) -> None:
        self._topics.update(names)

    def close(self) -> None:
        """Delete streams (and topics of an external Kafka), stop Tansu, close engines."""
        if self._streams:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            client.delete(*sorted(self._streams))
            client.close()
        if self._topics and self._tansu is None and self._bootstrap is not None:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self._bootstrap)
            with contextlib.suppress(Exception):
                admin.delete_topics(sorted(self._topics))
            admin.close()
        if self._tansu is not None:
            self._tansu.stop()
        for engine in self.dbs.values():
            engine.dispose()


@contextlib.contextmanager
def open_env(*, quick: bool) -> Iterator[Env]:
    env = Env(quick=quick)
    try:
        yield env
    finally:
        env.close()
