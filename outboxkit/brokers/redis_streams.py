"""Redis Streams as an outboxkit :class:`~outboxkit.broker.Broker` (redis-py, synchronous).

A topic is a stream key, a consumer group is a Redis consumer group, a member is a Redis
consumer with a stable name. The classic Redis Streams pitfalls are handled here:

* Un-acknowledged entries are never redelivered by Redis on their own: the pending entries
  list (PEL) does not expire. Each subscription therefore re-reads its own pending entries
  after a restart (``XREADGROUP ... 0``) and, every ``claim_interval_seconds``, takes over
  entries other (dead or hung) members left idle longer than ``claim_idle_seconds``
  (``XAUTOCLAIM``), reporting their delivery count from ``XPENDING``.
* Groups are created at ``0`` (``XGROUP CREATE ... 0 MKSTREAM``), never ``$``, so messages
  published before the first consumer existed are delivered.
* Consumer names are the caller's stable names, so a restarted process finds its entries.

Publishing runs one Lua script per batch: it ``XADD``s the messages in order and, once a
message fails, skips the later messages of the same key, so a failure never reorders a key
(a plain pipeline would already have written the later ones). The script is atomic, so a
lost connection means "all or nothing of the batch was written": every message is then
reported :class:`~outboxkit.errors.BrokerUnavailableError` and a retry may duplicate, never
reorder, what was written.

Stream entries carry the fields ``key``, ``value`` and ``h:<name>`` per header; values are
raw bytes, so the client must not decode responses.

Thread safety: the broker's client (its connection pool) is shared by every thread; each
subscription holds one connection of the pool for its blocking reads. ``close`` of a
subscription only sets a flag; a blocked read returns within one ``block_ms`` slice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from outboxkit.broker import Broker, BrokerMessage, Delivery, SendResult, Subscription
from outboxkit.errors import (
    BrokerClosedError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    InvalidNameError,
    MessageRejectedError,
)

__all__ = ["RedisStreamsBroker", "RedisStreamsConfig", "RedisStreamsSubscription"]

logger = logging.getLogger(__name__)

#: Longest single ``XREADGROUP BLOCK``: bounds how long a close takes to be noticed.
DEFAULT_BLOCK_MS = 500
#: Idle time after which another member may claim a pending entry (watermill uses 60 s).
DEFAULT_CLAIM_IDLE_SECONDS = 60.0
#: How often a member looks for idle entries to claim (watermill uses 5 s).
DEFAULT_CLAIM_INTERVAL_SECONDS = 5.0
#: An unreachable server must fail fast: the relay pauses and retries on its own.
DEFAULT_SOCKET_CONNECT_TIMEOUT = 3.0
#: Longest wait for an answer; must exceed the block slice.
DEFAULT_SOCKET_TIMEOUT = 5.0

_FIELD_KEY = b"key"
_FIELD_VALUE = b"value"
_HEADER_PREFIX = b"h:"

#: Error replies that say the server cannot work right now, not that the message is bad.
_UNAVAILABLE_REPLIES = (
    "OOM",
    "LOADING",
    "BUSY",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
)

# KEYS: the streams. ARGV[1]: MAXLEN (0 = none); then per message: stream index, message
# key, number of field pairs, fields. Returns per message "ok", "err" or "skip" followed by
# the entry id or error text. A failed key skips its later messages: never reorder a key.
_PUBLISH_SCRIPT = """
local out = {}
local failed = {}
local maxlen = tonumber(ARGV[1])
local i = 2
while i <= #ARGV do
  local stream = KEYS[tonumber(ARGV[i])]
  local key = ARGV[i + 1]
  local nfields = tonumber(ARGV[i + 2])
  local fields = {}
  for f = 1, nfields * 2 do
    fields[f] = ARGV[i + 2 + f]
  end
  i = i + 3 + nfields * 2
  if failed[key] then
    out[#out + 1] = {"skip", failed[key]}
  else
    local reply
    if maxlen > 0 then
      reply = redis.pcall("XADD", stream, "MAXLEN", "~", maxlen, "*", unpack(fields))
    else
      reply = redis.pcall("XADD", stream, "*", unpack(fields))
    end
    if type(reply) == "table" and reply.err then
      failed[key] = reply.err
      out[#out + 1] = {"err", reply.err}
    else
      out[#out + 1] = {"ok", reply}
    end
  end
end
return out
"""


@attrs.frozen(kw_only=True)
class RedisStreamsConfig:
    """Settings of a :class:`RedisStreamsBroker`. ``url`` is ignored when a client is given."""

    url: str | None = None
    #: Approximate ``MAXLEN ~`` per stream; ``None`` keeps everything. Trimming does not
    #: know about groups: keep it far above any backlog or unacknowledged entries are lost.
    maxlen: int | None = attrs.field(default=None)
    block_ms: int = attrs.field(default=DEFAULT_BLOCK_MS, validator=attrs.validators.ge(1))
    claim_idle_seconds: float = attrs.field(
        default=DEFAULT_CLAIM_IDLE_SECONDS, validator=attrs.validators.gt(0)
    )
    claim_interval_seconds: float = attrs.field(
        default=DEFAULT_CLAIM_INTERVAL_SECONDS, validator=attrs.validators.gt(0)
    )
    socket_connect_timeout: float = attrs.field(
        default=DEFAULT_SOCKET_CONNECT_TIMEOUT, validator=attrs.validators.gt(0)
    )
    socket_timeout: float = attrs.field(
        default=DEFAULT_SOCKET_TIMEOUT, validator=attrs.validators.gt(0)
    )
    #: Retries of a command on a connection error (a stale pooled connection, a blip).
    retries: int = attrs.field(default=1, validator=attrs.validators.ge(0))

    @maxlen.validator
    def _check_maxlen(self, _: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and value <= 0:
            raise ConfigurationError(f"maxlen must be positive or None, not {value}")

    def __attrs_post_init__(self) -> None:
        if self.block_ms / 1000 >= self.socket_timeout:
            raise ConfigurationError(
                f"block_ms ({self.block_ms}) must be shorter than socket_timeout "
                f"({self.socket_timeout} s), or every blocked read would time out"
            )

    def create_client(self) -> redis.Redis:
        """A client for :attr:`url` with this configuration's timeouts and retries."""
        if not self.url:
            raise ConfigurationError("RedisStreamsConfig needs a url (or pass a client)")
        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.socket_connect_timeout,
            socket_timeout=self.socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), self.retries),
            decode_responses=False,
        )


def _unavailable(exc: Exception, what: str) -> BrokerUnavailableError:
    return BrokerUnavailableError(f"Redis unavailable while {what}: {exc}")


def _is_unavailable_reply(text: str) -> bool:
    return text.startswith(_UNAVAILABLE_REPLIES)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisStreamsBroker(Broker):
    """:class:`~outboxkit.broker.Broker` on Redis Streams; see the module docstring."""

    def __init__(self, config: RedisStreamsConfig, *, client: redis.Redis | None = None) -> None:
        self.config = config
        self._owns_client = client is None
        self._client: redis.Redis = client if client is not None else config.create_client()
        if self._client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisStreamsBroker needs a client with decode_responses=False: values are bytes"
            )
        self._publish_script = self._client.register_script(_PUBLISH_SCRIPT)
        self._lock = threading.Lock()
        self._closed = False
        self._subscriptions: list[RedisStreamsSubscription] = []

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> RedisStreamsBroker:
        """A broker owning a client for ``url``; ``settings`` are :class:`RedisStreamsConfig`."""
        return cls(RedisStreamsConfig(url=url, **settings))

    @classmethod
    def from_client(cls, client: redis.Redis, **settings: Any) -> RedisStreamsBroker:
        """A broker on the caller's client, which :meth:`close` leaves open.

        The client's own timeouts apply; give it a short ``socket_connect_timeout`` and a
        ``socket_timeout`` longer than ``block_ms``.
        """
        return cls(RedisStreamsConfig(**settings), client=client)

    @property
    def client(self) -> redis.Redis:
        return self._client

    # ------------------------------------------------------------------ Broker
    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        self._check_open()
        if not messages:
            return []
        streams: dict[str, int] = {}
        args: list[bytes | str | int] = [self.config.maxlen or 0]
        for message in messages:
            index = streams.setdefault(message.topic, len(streams) + 1)
            fields = _encode_fields(message)
            args.extend((index, message.key, len(fields) // 2))
            args.extend(fields)
        try:
            replies = self._publish_script(keys=list(streams), args=args, client=self._client)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            error: BrokerError = _unavailable(exc, f"publishing {len(messages)} messages")
            return [SendResult(message=m, error=error) for m in messages]
        except redis.exceptions.ResponseError as exc:
            # The whole script was refused (OOM, a read-only replica, ...): nothing written.
            text = str(exc)
            if _is_unavailable_reply(text):
                error = BrokerUnavailableError(f"Redis refused the batch: {text}")
            else:
                error = MessageRejectedError(f"Redis refused the batch: {text}")
            return [SendResult(message=m, error=error) for m in messages]
        return [
            self._result(message, reply) for message, reply in zip(messages, replies, strict=True)
        ]

    def subscribe(self, topic: str, group: str, consumer_name: str) -> RedisStreamsSubscription:
        _check_name("consumer name", consumer_name)
        self.ensure_topic(topic, group)
        subscription = RedisStreamsSubscription(self, topic, group, consumer_name)
        with self._lock:
            if self._closed:
                subscription.close()
                raise BrokerClosedError("Redis Streams broker is closed")
            self._subscriptions.append(subscription)
        return subscription

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        """Create the stream (empty) and the group at the beginning; idempotent.

        Without a group, an empty stream cannot exist in Redis, so nothing is created: the
        first ``XADD`` creates it.
        """
        self._check_open()
        _check_name("topic", topic)
        if group is None:
            return
        _check_name("group", group)
        try:
            self._client.xgroup_create(topic, group, id="0", mkstream=True)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise _unavailable(exc, f"creating group {group} on {topic}") from exc
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"creating group {group} on {topic} failed: {exc}") from exc

    def close(self) -> None:
        """Stop every subscription, then release the connections (if the client is ours)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
        if self._owns_client:
            self._client.close()
            self._client.connection_pool.disconnect()

    # ------------------------------------------------------------------ internals
    @property
    def closed(self) -> bool:
        return self._closed

    def _forget(self, subscription: RedisStreamsSubscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("Redis Streams broker is closed")

    def _result(self, message: BrokerMessage, reply: Sequence[bytes]) -> SendResult:
        status, detail = _text(reply[0]), _text(reply[1])
        if status == "ok":
            return SendResult(message=message)
        if status == "skip":
            detail = f"not sent: an earlier message of key {message.key!r} failed: {detail}"
        if _is_unavailable_reply(_text(reply[1])):
            return SendResult(message=message, error=BrokerUnavailableError(detail))
        return SendResult(
            message=message,
            error=MessageRejectedError(f"XADD to {message.topic} refused: {detail}"),
        )


class RedisStreamsSubscription(Subscription):
    """A Redis consumer ``consumer_name`` of ``group`` on stream ``topic``."""

    def __init__(
        self, broker: RedisStreamsBroker, topic: str, group: str, consumer_name: str
    ) -> None:
        self._broker = broker
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
                raise _unavailable(exc, f"reading {self.topic}") from exc
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
            raise _unavailable(exc, f"acknowledging {delivery.receipt!r} on {self.topic}") from exc
        except redis.exceptions.ResponseError as exc:
            raise BrokerError(f"XACK on {self.topic} failed: {exc}") from exc

    def close(self) -> None:
        """Stop receiving. Pending entries stay in the PEL, to be re-read by this name or
        claimed by another member after ``claim_idle_seconds`` (Redis has no "give back")."""
        if self._closed:
            return
        self._closed = True
        self._broker._forget(self)
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
        """Our own pending entries first (after a restart), then idle ones of others."""
        if self._own_cursor is not None:
            own = self._read(self._own_cursor, max_messages, None)
            if own:
                self._own_cursor = own[-1].receipt
                return self._with_counts(own)
            self._own_cursor = None
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
            deliveries.append(_decode_entry(self.topic, entry_id, fields, first))
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


def _check_name(what: str, name: str) -> None:
    if not name or not name.strip():
        raise InvalidNameError(f"{what} must not be empty")


def _encode_fields(message: BrokerMessage) -> list[bytes | str]:
    fields: list[bytes | str] = [_FIELD_KEY, message.key, _FIELD_VALUE, message.value]
    for name, value in message.headers.items():
        fields.extend((_HEADER_PREFIX + name.encode(), value))
    return fields


def _decode_entry(
    topic: str, entry_id: bytes, fields: Mapping[bytes, bytes], first: bool
) -> Delivery:
    headers = {
        _text(name[len(_HEADER_PREFIX) :]): _text(value)
        for name, value in fields.items()
        if name.startswith(_HEADER_PREFIX)
    }
    return Delivery(
        topic=topic,
        key=_text(fields.get(_FIELD_KEY, b"")),
        value=bytes(fields.get(_FIELD_VALUE, b"")),
        headers=headers,
        receipt=entry_id,
        delivery_count=1 if first else 2,
    )
