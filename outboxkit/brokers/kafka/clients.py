"""Construction of kafka-python clients, with their failures translated to our errors.

:class:`SharedClient` holds the one producer (or admin client) a broker shares between
threads: built on first use, replaced after :meth:`SharedClient.discard`, and built by one
thread at a time without making the others wait in line behind an unreachable broker.

Building a kafka-python client blocks until a bootstrap server answers or
``bootstrap_timeout_ms`` passes (10 s by default), and nothing can cut that wait short. So a
client is built in a helper thread, and the caller waits on it *or* on the broker's
``interrupted`` event (set by ``Broker.interrupt`` and ``close``): a stopping engine is never
held by a bootstrap that no one needs any more. A client that arrives after its caller gave
up is closed by the helper thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from outboxkit.brokers.kafka.errors import Verdict, classify
from outboxkit.brokers.kafka.reachability import BootstrapRefusedError, check_bootstrap
from outboxkit.errors import (
    BrokerClosedError,
    BrokerSetupError,
    BrokerUnavailableError,
    ConfigurationError,
    ConnectInterruptedError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a caller waiting for a client looks at the ``interrupted`` event.
_INTERRUPT_POLL_SECONDS = 0.05
#: How long closing a client that arrived after its caller gave up may take.
_ABANDONED_CLOSE_SECONDS = 1.0


def build_interruptibly(
    build: Callable[[], T],
    interrupted: threading.Event,
    what: str,
    discard: Callable[[T], None],
) -> T:
    """``build()`` in a helper thread; give up as soon as ``interrupted`` is set.

    Raises :class:`ConnectInterruptedError` when interrupted first (the helper thread then
    hands the client, should it still arrive, to ``discard``), else returns what ``build``
    returned or raises what it raised.
    """
    if interrupted.is_set():
        raise ConnectInterruptedError(f"not connecting a Kafka {what}: the broker is stopping")
    lock = threading.Lock()
    done = threading.Event()
    abandoned = False
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["client"] = build()
        except BaseException as exc:  # handed to the caller, who raises it
            outcome["error"] = exc
        with lock:
            done.set()
            late = abandoned
        if late and "client" in outcome:
            discard(outcome["client"])

    helper = threading.Thread(target=run, name=f"outboxkit-kafka-connect-{what}", daemon=True)
    helper.start()
    while not done.wait(_INTERRUPT_POLL_SECONDS):
        if interrupted.is_set():
            with lock:
                if not done.is_set():
                    abandoned = True
                    raise ConnectInterruptedError(
                        f"gave up connecting a Kafka {what}: the broker is stopping"
                    )
    if "error" in outcome:
        raise outcome["error"]
    client: T = outcome["client"]
    return client


def new_client(
    factory: Any,
    settings: Mapping[str, Any],
    what: str,
    servers: str,
    interrupted: threading.Event | None = None,
) -> Any:
    """Build a kafka-python client; bad settings and unreachable brokers become ours.

    When every bootstrap server refuses a TCP connection, no client is built and
    :class:`~outboxkit.brokers.kafka.reachability.BootstrapRefusedError` says so at once
    (see :mod:`~outboxkit.brokers.kafka.reachability`). With ``interrupted``, the wait for a
    bootstrap server ends as soon as it is set (see the module docstring).
    """
    from kafka.errors import KafkaConfigurationError

    def build() -> Any:
        check_bootstrap(servers, settings, what)
        return factory(**settings)

    def discard(client: Any) -> None:
        close_quietly(client, what, timeout=_ABANDONED_CLOSE_SECONDS)

    try:
        if interrupted is None:
            return build()
        return build_interruptibly(build, interrupted, what, discard)
    except (ConnectInterruptedError, BootstrapRefusedError):
        raise
    except KafkaConfigurationError as exc:
        raise ConfigurationError(f"invalid Kafka {what} settings: {exc}") from exc
    except Exception as exc:
        text = f"cannot connect a Kafka {what} to {servers}: {type(exc).__name__}: {exc}"
        if classify(exc) is Verdict.MISCONFIGURED:
            # SASL refused, authorization failed: no retry can help (fatal).
            raise BrokerSetupError(text) from exc
        raise BrokerUnavailableError(text) from exc


class SharedClient:
    """A lazily built client shared by threads, which can be thrown away and built again.

    Building waits up to ``bootstrap_timeout_ms`` for an unreachable broker, under a lock.
    Without care, N threads asking at once would wait N times that in a row (an operations
    report saw ``stop()`` time out with four threads queued on the admin client). So a
    thread that started waiting *before* another thread's build failed gets that failure at
    once instead of trying again: every caller waits about one bootstrap timeout at most.
    """

    def __init__(
        self,
        build: Callable[[], Any],
        what: str,
        interrupted: threading.Event | None = None,
    ) -> None:
        self._build = build
        #: Set by the broker's ``interrupt``/``close``: later builds fail at once.
        self._interrupted = interrupted or threading.Event()
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
            if self._interrupted.is_set():
                raise ConnectInterruptedError(
                    f"not connecting a Kafka {self._what}: the broker is stopping"
                )
            if self._failure is not None and self._failure[0] >= asked:
                error = self._failure[1]
                # Of the same class, so an outage log sees the same cause, not a new one.
                raise type(error)(
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
        self._interrupted.set()  # a build in progress gives up, releasing the lock
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
