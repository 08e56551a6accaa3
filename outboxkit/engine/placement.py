"""Checks, when an engine starts, that each consumed service's events can be handled here.

A consumer pointed at the wrong place does not fail loudly on its own: every event of its
topic would be logged and dropped (its row is in another database) or go ``dead`` (no
handler), one by one. These misconfigurations are cheap to see before the first delivery:

* the service is consumed through an inbox (:attr:`Route.inbox`) but the engine has none for
  it, or the engine has an inbox for a service whose producers do not know it (they would
  not read its receipts, and would rescue every ``published`` row as never consumed);
* the inbox table, or (without an inbox) the service's outbox table, does not exist in this
  consumer's database;
* the engine was told to consume a service it has no handler for.

A database that cannot be reached at start is not a misconfiguration: it is logged and the
consumer threads wait for it as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from outboxkit.consume.registry import HandlerRegistry
from outboxkit.errors import ConfigurationError, RepositoryError
from outboxkit.inbox.base import Inbox
from outboxkit.inbox.receipts import receipts_group, receipts_topic
from outboxkit.routing import Route
from outboxkit.store import Repository

logger = logging.getLogger(__name__)


def check_consumers(
    routes: Sequence[Route],
    *,
    repository: Repository,
    registry: HandlerRegistry,
    inboxes: Mapping[str, Inbox],
    relay_routes: Sequence[Route] = (),
) -> None:
    """Raise :class:`ConfigurationError` naming the service and the fix for the first
    consumer route whose events could not be handled here (see the module docstring), or
    whose receipt topic and group (consumed or relayed inbox routes) are not valid names."""
    for route in [*routes, *relay_routes]:
        if route.inbox:
            receipts_topic(route)  # InvalidNameError (a ConfigurationError) when too long
            receipts_group(route)
    for route in routes:
        service = route.service
        inbox = inboxes.get(service)
        if route.inbox and inbox is None:
            raise ConfigurationError(
                f"service {service!r} is consumed through an inbox (inbox=True in its "
                f"route) but this engine has none for it: pass "
                f"Engine(..., inboxes={{{service!r}: SqlInbox(consumer_db)}})"
            )
        if inbox is not None and not route.inbox:
            raise ConfigurationError(
                f"this engine has an inbox for service {service!r} but its route says "
                f"inbox=False: configure ServiceCatalog.configure({service!r}, inbox=True) in "
                f"the routing producers and consumers share, or its producers will republish "
                f"every event they never see consumed"
            )
        if not registry.event_types(service):
            raise ConfigurationError(
                f"this engine consumes service {service!r} ({route.topic}) but has no handler "
                f"for any of its event types: every event would go dead; register handlers "
                f"or leave it out of consumer_services"
            )
        try:
            if inbox is not None:
                inbox.check()
            elif repository.has_table(route) is False:
                raise ConfigurationError(
                    f"the outbox table {route.table!r} of service {service!r} does not exist "
                    f"in this consumer's database ({_where(repository)}): the consumer "
                    f"finds each event's row in the database its producers write. Run "
                    f"`outboxkit migrate` there, or, if this consumer writes to another "
                    f"database, consume through an inbox (docs/inbox.md)"
                )
        except RepositoryError as exc:
            # The consumer thread meets the same error at once and reports it: an outage
            # once per state change, a fatal one (a refused password) by stopping the engine
            # with one line. A warning here would say it twice.
            logger.debug(
                "cannot check the tables of service %s now (%s); its consumer will wait for "
                "the database",
                service,
                exc,
            )


def _where(repository: Repository) -> str:
    facts = repository.describe()
    return str(facts.get("url") or facts.get("repository"))
