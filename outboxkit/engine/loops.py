"""The bodies of the engine's threads: the relay, consumer and receipt loops of a service, and
the PostgreSQL listener.

Each loop repeats one deterministic step (:meth:`Relay.run_once`, :meth:`Consumer.run_once`,
:meth:`ReceiptApplier.run_once`) until the engine stops. A broker or database outage pauses
the loop with exponential backoff (the attempt is not counted against any row), logged once
per state change by
:class:`~outboxkit.engine.outages.OutageLog`; an unexpected exception is logged with the
service's name and the loop goes on, so one bug never silently stops a worker. A
:class:`~outboxkit.errors.FatalError` (wrong password, missing table, missing topic) is
handed to ``on_fatal`` and ends the loop: no wait can fix it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from outboxkit.broker import Broker, Subscription
from outboxkit.consume.consumer import Consumer
from outboxkit.engine.outages import OutageLog
from outboxkit.engine.stats import StatsRecorder
from outboxkit.engine.wakeups import Wakeups
from outboxkit.errors import (
    BrokerUnavailableError,
    FatalError,
    RedeliveryRequested,
    RepositoryError,
)
from outboxkit.inbox.receipts import ReceiptApplier, receipts_group, receipts_topic
from outboxkit.relay.relay import Relay
from outboxkit.routing import Route
from outboxkit.store import NewRowListener, RelayStore

logger = logging.getLogger(__name__)

#: Called with the fatal error that ended a loop (the engine then stops every loop).
OnFatal = Callable[[FatalError], None]


def _ignore_fatal(_exc: FatalError) -> None:
    pass


def run_relay(
    relay: Relay,
    broker: Broker,
    *,
    stopping: threading.Event,
    wake: threading.Event,
    stats: StatsRecorder,
    on_fatal: OnFatal = _ignore_fatal,
) -> None:
    """Run :func:`relay_steps`, then give back what the relay still holds (a prefetched claim)."""
    try:
        relay_steps(relay, broker, stopping=stopping, wake=wake, stats=stats, on_fatal=on_fatal)
    finally:
        relay.close()


def relay_steps(
    relay: Relay,
    broker: Broker,
    *,
    stopping: threading.Event,
    wake: threading.Event,
    stats: StatsRecorder,
    on_fatal: OnFatal = _ignore_fatal,
) -> None:
    """Claim and publish the service's due rows until ``stopping`` is set.

    Never sleeps after a claim that returned rows. After an empty claim it polls adaptively:
    ``min_poll_interval`` at first (right after work or a wake-up the next rows are likely
    close), doubling up to ``idle_interval`` while nothing comes. A wake-up (a commit in this
    process, a notification from another) ends the wait at once.
    """
    route = relay.route
    config = relay.config
    backoff = config.outage_backoff
    poll = config.min_poll_interval
    next_rescue = time.monotonic() + config.republish_interval
    topic_ready = False
    outage = OutageLog(logger, f"relay {route.service}")
    while not stopping.is_set():
        try:
            if not topic_ready:
                broker.ensure_topic(route.topic)
                topic_ready = True
            wake.clear()
            step = relay.run_once()
            stats.count_published(step.published)
            backoff = config.outage_backoff
            outage.recovered()
            if time.monotonic() >= next_rescue:
                next_rescue = time.monotonic() + config.republish_interval
                relay.republish_stale()
            if step.claimed:
                poll = config.min_poll_interval
                continue
            woken = wake.wait(poll)
            poll = config.min_poll_interval if woken else min(poll * 2, config.idle_interval)
        except FatalError as exc:
            on_fatal(exc)
            return
        except (BrokerUnavailableError, RepositoryError) as exc:
            if stopping.is_set():
                return
            if isinstance(exc, BrokerUnavailableError):
                topic_ready = False  # a broker back from a restart may have lost the topic
            outage.failed(exc, backoff)
            stopping.wait(backoff)
            backoff = min(backoff * 2, config.outage_backoff_max)
        except Exception:
            if stopping.is_set():
                return  # e.g. the broker closed under a call that was stopping anyway
            logger.exception("relay %s step failed unexpectedly; going on", route.service)
            stopping.wait(config.outage_backoff)


def run_listener(
    repository: RelayStore,
    services_by_table: Mapping[str, str],
    *,
    stopping: threading.Event,
    wakeups: Wakeups,
    backoff: float = 1.0,
    backoff_max: float = 30.0,
    on_fatal: OnFatal = _ignore_fatal,
) -> None:
    """Wake this process's relays when another process commits new rows (PostgreSQL).

    Losing the listening connection only costs latency (relays poll anyway): it is opened
    again after a pause, logged once per loss.
    """
    pause = backoff
    listener: NewRowListener | None = None
    outage = OutageLog(logger, "new-row listener")
    try:
        while not stopping.is_set():
            try:
                if listener is None:
                    listener = repository.new_row_listener()
                    if listener is None:
                        return
                    pause = backoff
                    outage.recovered()
                tables = listener.wait(0.5)
                wakeups.wake(services_by_table[t] for t in tables if t in services_by_table)
            except FatalError as exc:
                on_fatal(exc)
                return
            except RepositoryError as exc:
                outage.failed(exc, pause)
                if listener is not None:
                    listener.close()
                    listener = None
                stopping.wait(pause)
                pause = min(pause * 2, backoff_max)
    finally:
        if listener is not None:
            listener.close()


def run_consumer(
    consumer: Consumer,
    broker: Broker,
    member: str,
    *,
    stopping: threading.Event,
    on_fatal: OnFatal = _ignore_fatal,
) -> None:
    """Receive and handle the service's deliveries as ``member`` until ``stopping`` is set."""
    route: Route = consumer.route
    config = consumer.config
    backoff = config.outage_backoff
    subscription: Subscription | None = None
    outage_log = OutageLog(logger, f"consumer {route.service}")
    try:
        while not stopping.is_set():
            try:
                if subscription is None:
                    broker.ensure_topic(route.topic, route.group)
                    subscription = broker.subscribe(route.topic, route.group, member)
                consumer.run_once(subscription, should_stop=stopping.is_set)
                backoff = config.outage_backoff
                outage_log.recovered()
            except FatalError as exc:
                on_fatal(exc)
                return
            except RedeliveryRequested as request:
                # An inbox consumer's failed attempt: the broker delivers it again once we
                # subscribe again (see outboxkit.inbox.consumer).
                logger.info("consumer %s: %s", route.service, request.reason)
                if subscription is not None:
                    close_quietly(subscription)
                    subscription = None
                stopping.wait(request.delay)
            except Exception as exc:
                outage = isinstance(exc, (BrokerUnavailableError, RepositoryError))
                if stopping.is_set():
                    return  # the broker closed under a call that was stopping anyway
                if outage:
                    outage_log.failed(exc, backoff)
                else:
                    logger.exception(
                        "consumer %s step failed unexpectedly; going on", route.service
                    )
                # Unacknowledged deliveries must come again: drop the subscription so
                # a later acknowledgement can never cover them.
                if subscription is not None:
                    close_quietly(subscription)
                    subscription = None
                stopping.wait(backoff)
                backoff = min(backoff * 2, config.outage_backoff_max)
    finally:
        if subscription is not None:
            close_quietly(subscription)
        consumer.close()  # after the subscription: a receive running ahead returns first


def close_quietly(subscription: Subscription) -> None:
    try:
        subscription.close()
    except Exception:
        logger.exception("closing a subscription failed")


#: First and longest pause of the receipt loop while the broker or database is down.
RECEIPTS_OUTAGE_BACKOFF = 1.0
RECEIPTS_OUTAGE_BACKOFF_MAX = 30.0


def run_receipts(
    applier: ReceiptApplier,
    broker: Broker,
    member: str,
    *,
    stopping: threading.Event,
    outages: OutageLog,
    on_fatal: Callable[[FatalError], None],
    receive_timeout: float = 0.5,
) -> None:
    """The receipt thread of one relayed inbox route: apply receipts until ``stopping``.

    Outages are reported through ``outages`` (once per state change); a fatal error (the
    receipts topic missing with topic creation off, a refused permission or password) goes
    to ``on_fatal`` and ends the loop, as in the relay and consumer loops: without receipts
    every row of the route would be republished until it went dead.
    """
    route = applier.route
    topic, group = receipts_topic(route), receipts_group(route)
    backoff = RECEIPTS_OUTAGE_BACKOFF
    subscription: Subscription | None = None
    try:
        while not stopping.is_set():
            try:
                if subscription is None:
                    broker.ensure_topic(topic, group)
                    subscription = broker.subscribe(topic, group, member)
                applier.run_once(subscription, timeout=receive_timeout)
                backoff = RECEIPTS_OUTAGE_BACKOFF
                outages.recovered()
            except FatalError as exc:
                on_fatal(exc)
                return
            except Exception as exc:
                if stopping.is_set():
                    return  # the broker closed under a call that was stopping anyway
                if isinstance(exc, (BrokerUnavailableError, RepositoryError)):
                    outages.failed(exc, backoff)
                else:
                    logger.exception("receipts of %s: step failed unexpectedly", route.service)
                if subscription is not None:
                    _close_receipts(subscription)
                    subscription = None
                stopping.wait(backoff)
                backoff = min(backoff * 2, RECEIPTS_OUTAGE_BACKOFF_MAX)
    finally:
        if subscription is not None:
            _close_receipts(subscription)


def _close_receipts(subscription: Subscription) -> None:
    try:
        subscription.close()
    except Exception:
        logger.exception("closing a receipt subscription failed")
