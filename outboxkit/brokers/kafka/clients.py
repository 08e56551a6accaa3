"""Construction of kafka-python clients, with their failures translated to our errors.

:class:`SharedClient` holds the one producer (or admin client) a broker shares between
threads: built on first use, replaced after :meth:`SharedClient.discard`, and built by one
thread at a time without making the others wait in line behind an unreachable broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from outboxkit.errors import BrokerClosedError, BrokerUnavailableError, ConfigurationError

logger = logging.getLogger(__name__)


def new_client(factory: Any, settings: Mapping[str, Any], what: str, servers: str) -> Any:
    """Build a kafka-python client; bad settings and unreachable brokers become ours."""
    from kafka.errors import KafkaConfigurationError

    try:
        return factory(**settings)
    except KafkaConfigurationError as exc:
        raise ConfigurationError(f"invalid Kafka {what} settings: {exc}") from exc
    except Exception as exc:
        raise BrokerUnavailableError(
            f"cannot connect a Kafka {what} to {servers}: {type(exc).__name__}: {exc}"
        ) from exc


class SharedClient:
    """A lazily built client shared by threads, which can be thrown away and built again.

    Building waits up to ``bootstrap_timeout_ms`` for an unreachable broker, under a lock.
    Without care, N threads asking at once would wait N times that in a row (an operations
    report saw ``stop()`` time out with four threads queued on the admin client). So a
    thread that started waiting *before* another thread's build failed gets that failure at
    once instead of trying again: every caller waits about one bootstrap timeout at most.
    """

    def __init__(self, build: Callable[[], Any], what: str) -> None:
        self._build = build
        self._what = what
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False
        #: ``(monotonic time, error)`` of the last failed build.
        self._failure: tuple[float, BrokerUnavailableError] | None = None

    @property
    def current(self) -> Any:
        """The client built last (``None`` when there is none); never builds."""
        return self._client

    def get(self) -> Any:
        """The client, built now if there is none. Raises what building raised."""
        asked = time.monotonic()
        with self._lock:
            if self._closed:
                raise BrokerClosedError(f"the Kafka {self._what} is closed")
            if self._client is not None:
                return self._client
            if self._failure is not None and self._failure[0] >= asked:
                error = self._failure[1]
                raise BrokerUnavailableError(
                    f"{error} (another thread's attempt failed while this one waited)"
                ) from error
            try:
                self._client = self._build()
            except BrokerUnavailableError as exc:
                self._failure = (time.monotonic(), exc)
                raise
            self._failure = None
            return self._client

    def discard(self, client: Any, reason: str, *, close_timeout: float) -> bool:
        """Forget ``client`` (if it is still the current one) and close it within bounds.

        Returns whether this call discarded it: of several threads noticing the same broken
        client, one closes it and the next :meth:`get` builds a new one.
        """
        with self._lock:
            if client is None or self._client is not client:
                return False
            self._client = None
        logger.warning("discarding the Kafka %s and building a new one: %s", self._what, reason)
        close_quietly(client, self._what, timeout=close_timeout)
        return True

    def close(self) -> Any:
        """Refuse every later :meth:`get`; return the client (``None`` if none) to close."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            return client


def close_quietly(client: Any, what: str, *, timeout: float) -> None:
    """Close a kafka-python producer or admin client, logging instead of raising."""
    try:
        if hasattr(client, "flush"):
            client.close(timeout=timeout)
        else:
            client.close()
    except Exception as exc:
        logger.warning("Kafka %s close failed: %s", what, exc)
