"""One member of a consumer group: reading new entries, recovering pending ones, acking."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import redis

from outboxkit.broker import Delivery, Subscription
from outboxkit.brokers.redis_streams.config import RedisStreamsConfig
from outboxkit.brokers.redis_streams.errors import unavailable
from outboxkit.brokers.redis_streams.takeover import take_over_dead_members
from outboxkit.brokers.redis_streams.wire import decode_entry
from outboxkit.errors import BrokerClosedError, BrokerError

__all__ = ["RedisStreamsSubscription", "StreamHost"]

logger = logging.getLogger(__name__)


class StreamHost(Protocol):
    """What a subscription uses of the broker that made it (the broker is one)."""

    @property
    def client(self) -> redis.Redis: ...

    @property
    def config(self) -> RedisStreamsConfig: ...

    @property
    def closed(self) -> bool: ...

    @property
    def takeover_script(self) -> Any: ...

    def ensure_topic(self, topic: str, group: str | None = None) -> None: ...


class RedisStreamsSubscription(Subscription):
    """A Redis consumer ``consumer_name`` of ``group`` on stream ``topic``."""

    def __init__(
        self,
        broker: StreamHost,
        topic: str,
        group: str,
        consumer_name: str,
        *,
        on_close: Callable[[RedisStreamsSubscription], None],
    ) -> None:
        self._broker = broker
        #: Tells the broker this member stopped (it stops keeping it alive); never blocks.
        self._on_close = on_close
        self._config = broker.config
        self.topic = topic
        self.group = group
        self.consumer_name = consumer_name
        self._closed = False
        self._io = threading.Lock()  # held by the receiving thread for a whole receive
        self._connection_lock = threading.Lock()
        self._connection: redis.Redis | None = None
        #: Where re-reading our own pending entries goes on; None once done.
        self._own_cursor: bytes | None = b"0"
        self._claim_cursor: bytes = b"0-0"
        self._next_claim = 0.0

    # ------------------------------------------------------------------ Subscription
    def receive(self, *, timeout: float, max_messages: int = 100) -> list[Delivery]:
        if self._closed or max_messages <= 0:
            return []
        with self._io:
            try:
                return self._receive(max(timeout, 0.0), max_messages)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if self.closed or self._broker.closed:
                    return []
                self._drop_connection()
                raise unavailable(exc, f"reading {self.topic}") from exc
            except redis.exceptions.ResponseError as exc:
                if self.closed or self._broker.closed:
                    return []
                raise BrokerError(f"reading {self.topic} as {self.group} failed: {exc}") from exc
            finally:
                if self.closed:
                    self._drop_connection()

    def ack(self, delivery: Delivery) -> None:
        if self._closed:
            raise BrokerClosedError(f"subscription {self.consumer_name} to {self.topic} is closed")
        try:
            self._broker.client.xack(self.topic, self.group, delivery.receipt)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise unavailable(exc, f"acknowledging {delivery.receipt!r} on {self.topic}") from exc
        except redis.exceptions.ResponseError as exc:
            raise BrokerError(f"XACK on {self.topic} failed: {exc}") from exc

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One ``XACK stream group id1 id2 ...`` for the whole batch (all on this stream)."""
        if not deliveries:
            return
        if self._closed:
            raise BrokerClosedError(f"subscription {self.consumer_name} to {self.topic} is closed")
        receipts = [delivery.receipt for delivery in deliveries]
        try:
            self._broker.client.xack(self.topic, self.group, *receipts)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise unavailable(
                exc, f"acknowledging {len(receipts)} entries on {self.topic}"
            ) from exc
        except redis.exceptions.ResponseError as exc:
            raise BrokerError(f"XACK on {self.topic} failed: {exc}") from exc

    def close(self) -> None:
        """Stop receiving and stop being alive. Pending entries stay in the PEL (Redis has no
        "give back"): re-read by this name if it subscribes again, or taken over by another
        member's next sweep once the liveness key is deleted (at once, from the broker's
        heartbeat thread) or expired."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        # A blocked receive notices the flag within one block slice and drops the
        # connection itself; otherwise release it now.
        if self._io.acquire(blocking=False):
            try:
                self._drop_connection()
            finally:
                self._io.release()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (read afresh: another thread may set it)."""
        return self._closed

    # ------------------------------------------------------------------ internals
    def _conn(self) -> redis.Redis:
        with self._connection_lock:
            if self._connection is None:
                self._connection = redis.Redis(
                    connection_pool=self._broker.client.connection_pool,
                    single_connection_client=True,
                )
            return self._connection

    def _drop_connection(self) -> None:
        with self._connection_lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # releasing a broken connection must not mask the real error
                logger.debug("releasing the connection of %s failed", self.consumer_name)

    def _receive(self, timeout: float, max_messages: int) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while not self._closed:
            now = time.monotonic()
            if now >= self._next_claim:
                recovered = self._recover(max_messages)
                if recovered:
                    return recovered
            left = deadline - time.monotonic()
            block = min(self._config.block_ms, int(left * 1000))
            deliveries = self._read(b">", max_messages, block if block >= 1 else None)
            if deliveries:
                return deliveries
            if time.monotonic() >= deadline:
                break
        return []

    def _recover(self, max_messages: int) -> list[Delivery]:
        """Our own pending entries first (after a restart), then those of dead members, then
        idle ones of anyone."""
        if self._own_cursor is not None:
            own = self._read(self._own_cursor, max_messages, None)
            if own:
                self._own_cursor = own[-1].receipt
                return self._with_counts(own)
            self._own_cursor = None
        taken = self._take_over(max_messages)
        if taken:
            return taken  # the next receive sweeps again: there may be more
        reply = self._with_group(
            lambda c: c.xautoclaim(
                self.topic,
                self.group,
                self.consumer_name,
                int(self._config.claim_idle_seconds * 1000),
                start_id=self._claim_cursor,
                count=max_messages,
            )
        )
        next_cursor, entries = reply[0], reply[1]
        self._claim_cursor = next_cursor
        more = next_cursor not in (b"0-0", "0-0")
        self._next_claim = (
            time.monotonic() if more else time.monotonic() + self._config.claim_interval_seconds
        )
        claimed = self._deliveries(entries)
        if claimed:
            logger.info(
                "%s claimed %d idle entries of %s/%s",
                self.consumer_name,
                len(claimed),
                self.topic,
                self.group,
            )
        return self._with_counts(claimed)

    def _take_over(self, max_messages: int) -> list[Delivery]:
        """The pending entries of dead members (see :mod:`.takeover`), counts included."""
        try:
            taken = self._with_group(
                lambda c: take_over_dead_members(
                    c,
                    self._broker.takeover_script,
                    stream=self.topic,
                    group=self.group,
                    me=self.consumer_name,
                    idle_ms=int(self._config.claim_idle_seconds * 1000),
                    count=max_messages,
                )
            )
        except redis.exceptions.ResponseError as exc:
            if "no such key" not in str(exc):
                raise
            return []  # the stream is gone; the read that follows creates it again
        deliveries = self._deliveries(taken.entries)
        return [attrs.evolve(d, delivery_count=taken.counts.get(d.receipt, 2)) for d in deliveries]

    def _read(self, start: bytes, count: int, block: int | None) -> list[Delivery]:
        reply = self._with_group(
            lambda c: c.xreadgroup(
                self.group, self.consumer_name, {self.topic: start}, count=count, block=block
            )
        )
        if not reply:
            return []
        entries: list[Any] = []
        for _stream, stream_entries in reply:
            entries.extend(stream_entries)
        return self._deliveries(entries, first=start == b">")

    def _with_group(self, command: Any) -> Any:
        """Run ``command(connection)``; recreate the group once if it vanished (NOGROUP)."""
        try:
            return command(self._conn())
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("group %s on %s vanished; creating it again", self.group, self.topic)
            self._broker.ensure_topic(self.topic, self.group)
            return command(self._conn())

    def _deliveries(self, entries: Sequence[Any], *, first: bool = False) -> list[Delivery]:
        deliveries: list[Delivery] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted (trimmed) while pending: nothing left to deliver
                gone.append(entry_id)
                continue
            deliveries.append(decode_entry(self.topic, entry_id, fields, first))
        if gone:
            logger.warning("%d pending entries of %s were trimmed away", len(gone), self.topic)
            self._conn().xack(self.topic, self.group, *gone)
        return deliveries

    def _with_counts(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Fill in delivery counts from ``XPENDING`` (only on the recovery paths)."""
        if not deliveries:
            return deliveries
        rows = self._conn().xpending_range(
            self.topic,
            self.group,
            min=deliveries[0].receipt,
            max=deliveries[-1].receipt,
            count=len(deliveries),
            consumername=self.consumer_name,
        )
        counts = {row["message_id"]: int(row["times_delivered"]) for row in rows}
        return [
            attrs.evolve(d, delivery_count=max(counts.get(d.receipt, 2), 1)) for d in deliveries
        ]
