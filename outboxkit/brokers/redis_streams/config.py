"""Settings of the Redis Streams broker, and the client they describe."""

from __future__ import annotations

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from outboxkit.errors import ConfigurationError
from outboxkit.observability.logs import url_repr

__all__ = [
    "DEFAULT_BLOCK_MS",
    "DEFAULT_CLAIM_IDLE_SECONDS",
    "DEFAULT_CLAIM_INTERVAL_SECONDS",
    "DEFAULT_MEMBER_TTL_SECONDS",
    "DEFAULT_SOCKET_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "RedisStreamsConfig",
]

#: Longest single ``XREADGROUP BLOCK``: bounds how long a close takes to be noticed.
DEFAULT_BLOCK_MS = 500
#: Idle time after which another member may claim a pending entry (watermill uses 60 s).
DEFAULT_CLAIM_IDLE_SECONDS = 60.0
#: How often a member looks for idle entries to claim (watermill uses 5 s).
DEFAULT_CLAIM_INTERVAL_SECONDS = 5.0
#: How long a member counts as alive after its last heartbeat (refreshed every third of it).
DEFAULT_MEMBER_TTL_SECONDS = 10.0
#: An unreachable server must fail fast: the relay pauses and retries on its own.
DEFAULT_SOCKET_CONNECT_TIMEOUT = 3.0
#: Longest wait for an answer; must exceed the block slice.
DEFAULT_SOCKET_TIMEOUT = 5.0


@attrs.frozen(kw_only=True)
class RedisStreamsConfig:
    """Settings of a :class:`RedisStreamsBroker`. ``url`` is ignored when a client is given."""

    url: str | None = attrs.field(default=None, repr=url_repr)  # the password masked
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
    #: A member's liveness key lives this long; the broker's heartbeat thread refreshes it
    #: every third of it. Once it expired (a process killed, a host gone), the other members
    #: take the member's pending entries at once instead of after ``claim_idle_seconds``,
    #: and remove it from the group. Keep it above the longest pause of a process (a GC, a
    #: stalled VM): a false verdict costs a duplicate delivery, which handling absorbs.
    member_ttl_seconds: float = attrs.field(
        default=DEFAULT_MEMBER_TTL_SECONDS, validator=attrs.validators.ge(0.1)
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
