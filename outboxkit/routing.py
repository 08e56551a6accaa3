"""Where an event goes: ``event_type -> service -> Route(table, topic, consumer group)``.

Each service owns one outbox table, one topic (or stream) and one consumer group, so one
service's backlog or poison message never touches another's. Two objects hold this:

* :class:`ServiceCatalog` maps a service to its :class:`Route`, by the Go naming convention
  unless overridden per service;
* :class:`Routing` maps event types to services and answers "which route for this event?".

Every name is validated when it enters, because table names end up in SQL text and topic
names in broker commands: nothing is ever built from an unchecked name.
"""

from __future__ import annotations

import re
import threading

import attrs

from outboxkit.errors import InvalidNameError, RoutingError, UnknownEventTypeError

#: Longest identifier accepted for a table (PostgreSQL's limit is 63, MySQL's 64).
MAX_TABLE_NAME = 63
#: Column widths of the outbox table; longer values are rejected before any write.
MAX_EVENT_TYPE = 64
MAX_SERVICE_NAME = 64
MAX_TOPIC = 128
MAX_MESSAGE_KEY = 128
#: Namespace of the default topic and group names. The Go system used ``smartflow``.
DEFAULT_NAMESPACE = "outboxkit"

#: Whole names only: checked with ``fullmatch`` (``match`` with ``$`` lets "t\n" through,
#: a name the database or broker may not tell from "t").
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]+")
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_GROUP_RE = re.compile(r"[A-Za-z0-9._-]+")


def validate_table_name(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not _TABLE_RE.fullmatch(name) or len(name) > MAX_TABLE_NAME:
        raise InvalidNameError(
            f"invalid table name {name!r}: use letters, digits and '_' "
            f"(not starting with a digit), at most {MAX_TABLE_NAME} characters"
        )
    return name


def validate_topic_name(name: str) -> str:
    """Return ``name`` if it is a legal Kafka topic / Redis stream name for the outbox."""
    if (
        not isinstance(name, str)
        or not _TOPIC_RE.fullmatch(name)
        or name in {".", ".."}
        or len(name) > MAX_TOPIC
    ):
        raise InvalidNameError(
            f"invalid topic name {name!r}: use letters, digits, '.', '_' and '-', "
            f"at most {MAX_TOPIC} characters"
        )
    return name


def validate_group_name(name: str) -> str:
    """Return ``name`` if it is a legal consumer group name."""
    if not isinstance(name, str) or not _GROUP_RE.fullmatch(name) or len(name) > 255:
        raise InvalidNameError(
            f"invalid consumer group {name!r}: use letters, digits, '.', '_' and '-'"
        )
    return name


def validate_service_name(name: str) -> str:
    """Return ``name`` if it is a legal service name (it is stored in ``service_name``)."""
    if not isinstance(name, str) or not _SERVICE_RE.fullmatch(name) or len(name) > MAX_SERVICE_NAME:
        raise InvalidNameError(
            f"invalid service name {name!r}: use letters, digits, '_' and '-', "
            f"at most {MAX_SERVICE_NAME} characters"
        )
    return name


@attrs.frozen(kw_only=True)
class Route:
    """The table, topic and consumer group that belong to one service."""

    service: str = attrs.field(validator=lambda _i, _a, v: validate_service_name(v))
    table: str = attrs.field(validator=lambda _i, _a, v: validate_table_name(v))
    topic: str = attrs.field(validator=lambda _i, _a, v: validate_topic_name(v))
    group: str = attrs.field(validator=lambda _i, _a, v: validate_group_name(v))
    #: Consumers of this service handle its events through an inbox on their own database
    #: (:mod:`outboxkit.inbox`) and report back with receipts, which the producers'
    #: engines apply to their rows (a receipt thread per relayed inbox route).
    inbox: bool = False

    @classmethod
    def by_convention(cls, service: str, *, namespace: str = DEFAULT_NAMESPACE) -> Route:
        """The Go naming convention (``DefaultServiceRoute``).

        table ``<service with - as _>_outbox_messages``, topic ``<ns>.<service>.outbox``,
        group ``<ns>-<service>-outbox-consumer``.
        """
        validate_service_name(service)
        return cls(
            service=service,
            table=f"{service.replace('-', '_')}_outbox_messages",
            topic=f"{namespace}.{service}.outbox",
            group=f"{namespace}-{service}-outbox-consumer",
        )


class ServiceCatalog:
    """Maps a service to its :class:`Route`.

    A service gets the naming convention unless :meth:`configure` overrode it. Two services
    may never share a table, because each relay would then claim the other's rows.
    """

    def __init__(self, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not isinstance(namespace, str) or not _GROUP_RE.fullmatch(namespace):
            raise InvalidNameError(f"invalid namespace {namespace!r}")
        self._namespace = namespace
        self._overrides: dict[str, Route] = {}
        self._lock = threading.Lock()

    @property
    def namespace(self) -> str:
        return self._namespace

    def configure(
        self,
        service: str,
        *,
        table: str | None = None,
        topic: str | None = None,
        group: str | None = None,
        inbox: bool = False,
    ) -> Route:
        """Override any of the service's table, topic and group; the rest keep the convention.

        ``inbox=True`` says the service's consumers run on another database than its
        producers and keep an inbox there (see :attr:`Route.inbox`); producers and consumers
        must agree on it, so configure it in the code both share.
        """
        default = Route.by_convention(service, namespace=self._namespace)
        route = Route(
            service=service,
            table=default.table if table is None else table,
            topic=default.topic if topic is None else topic,
            group=default.group if group is None else group,
            inbox=inbox,
        )
        with self._lock:
            for other in self._overrides.values():
                if other.service != service and other.table == route.table:
                    raise RoutingError(
                        f"table {route.table!r} already belongs to service {other.service!r}"
                    )
            self._overrides[service] = route
        return route

    def route(self, service: str) -> Route:
        """The route of ``service``: its override, else the naming convention."""
        with self._lock:
            route = self._overrides.get(service)
        return route or Route.by_convention(service, namespace=self._namespace)


class Routing:
    """The event type registry: which service owns each event type.

    Registering the same pair twice is harmless; registering a type to a second service is
    a :class:`RoutingError`, because its events would land in two tables.
    """

    def __init__(self, catalog: ServiceCatalog | None = None) -> None:
        self.catalog = catalog or ServiceCatalog()
        self._services: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, event_type: str, service: str) -> Route:
        """Route ``event_type`` to ``service`` and return the service's route."""
        event_type = (event_type or "").strip()
        if not event_type:
            raise RoutingError("event type is empty")
        if len(event_type) > MAX_EVENT_TYPE:
            raise RoutingError(f"event type longer than {MAX_EVENT_TYPE} characters")
        validate_service_name(service)
        with self._lock:
            current = self._services.get(event_type)
            if current is not None and current != service:
                raise RoutingError(
                    f"event type {event_type!r} already registered to service {current!r}"
                )
            self._services[event_type] = service
        return self.catalog.route(service)

    def service_of(self, event_type: str) -> str:
        """The owning service, or :class:`UnknownEventTypeError`."""
        with self._lock:
            service = self._services.get(event_type)
        if service is None:
            raise UnknownEventTypeError(event_type)
        return service

    def route_of(self, event_type: str) -> Route:
        """The route an event of this type is written to and published on."""
        return self.catalog.route(self.service_of(event_type))

    def route_of_service(self, service: str) -> Route:
        return self.catalog.route(service)

    def is_registered(self, event_type: str) -> bool:
        with self._lock:
            return event_type in self._services

    def event_types(self, service: str | None = None) -> list[str]:
        """Registered event types, all or only ``service``'s, sorted."""
        with self._lock:
            return sorted(t for t, s in self._services.items() if service in (None, s))

    def services(self) -> list[str]:
        """Every service that owns at least one event type, sorted."""
        with self._lock:
            return sorted(set(self._services.values()))

    def routes(self) -> list[Route]:
        """The route of every registered service."""
        return [self.catalog.route(s) for s in self.services()]
