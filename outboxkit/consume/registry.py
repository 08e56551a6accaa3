"""Which function handles each event type.

One handler per event type: a second registration is an error (never a silent replacement,
which is how the Go system lost handlers), and a type with no route is an error at
registration, not at the first delivery.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar, overload

import attrs
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.consume.handler_shapes import check_handler, takes_session
from outboxkit.errors import DuplicateHandlerError
from outboxkit.messages import Event
from outboxkit.routing import Routing

logger = logging.getLogger(__name__)

P_contra = TypeVar("P_contra", contravariant=True)


class TransactionalHandler(Protocol[P_contra]):
    """Runs inside the consume transaction: its writes commit with the ``consumed`` status.

    ``TransactionalHandler[OrderPlaced]`` accepts ``(Event[OrderPlaced], Connection)``; the
    return value is ignored, so it is declared ``None`` to catch handlers that mean
    something by returning.
    """

    def __call__(self, event: Event[P_contra], connection: Connection, /) -> None: ...


class SessionHandler(Protocol[P_contra]):
    """Runs inside the consume transaction through an ORM session bound to it.

    ``SessionHandler[OrderPlaced]`` accepts ``(Event[OrderPlaced], Session)``. The session
    is flushed after the handler returns, so its changes commit with the ``consumed`` status
    (or, if anything fails, not at all); ``session.commit()`` only flushes.
    """

    def __call__(self, event: Event[P_contra], session: Session, /) -> None: ...


class SideEffectHandler(Protocol[P_contra]):
    """Runs outside any transaction (calls another system); the row is marked consumed after."""

    def __call__(self, event: Event[P_contra], /) -> None: ...


AnyHandler = TransactionalHandler[Any] | SessionHandler[Any] | SideEffectHandler[Any]
#: ``(event_type, payload_type) -> None``, raising ConfigurationError for a type that
#: cannot be decoded.
PayloadTypeCheck = Callable[[str, Any], None]

#: A transactional (connection or session) / side-effect handler, kept at its own type by
#: the decorator.
TransactionalHandlerT = TypeVar(
    "TransactionalHandlerT", bound=TransactionalHandler[Any] | SessionHandler[Any]
)
SideEffectHandlerT = TypeVar("SideEffectHandlerT", bound=SideEffectHandler[Any])


@attrs.frozen(kw_only=True)
class HandlerSpec:
    """A registered handler and how to run it.

    ``transactional=True`` (the default) is the Go ``ConsumeAndMarkConsumed`` style: the
    handler gets the consume transaction's connection and takes effect exactly once.
    ``transactional=False`` is the Go "side effect, then ``MarkConsumed``" style: if the
    process dies between the side effect and the mark, the event is delivered again, so the
    side effect must be idempotent on ``event.event_id`` (at-least-once).
    ``payload_type``, when set, is what the consumer decodes the JSON payload into before
    calling the handler (a payload that does not decode makes the event ``dead``).
    ``session=True``: a transactional handler whose second parameter is annotated as an ORM
    ``Session``; it gets one bound to the consume transaction instead of the connection.
    """

    event_type: str
    service: str
    func: Callable[..., Any]
    transactional: bool = True
    payload_type: Any = None
    session: bool = False


class HandlerRegistry:
    """Event type -> handler, checked against a :class:`~outboxkit.routing.Routing`."""

    def __init__(
        self, routing: Routing, *, check_payload_type: PayloadTypeCheck | None = None
    ) -> None:
        self.routing = routing
        #: Called with (event type, payload type) before a typed handler is registered;
        #: the engine passes its codecs' check, so an undecodable type fails at start-up.
        self.check_payload_type = check_payload_type
        self._handlers: dict[str, HandlerSpec] = {}
        self._lock = threading.Lock()
        self._started = False

    def mark_started(self) -> None:
        """The engine started its consumers: a handler registered later may not be served
        (its service is consumed only if it already was), which :meth:`register` says."""
        self._started = True

    @overload
    def register(
        self,
        event_type: str,
        handler: None = None,
        *,
        transactional: Literal[True] = True,
        payload_type: Any = None,
    ) -> Callable[[TransactionalHandlerT], TransactionalHandlerT]: ...

    @overload
    def register(
        self,
        event_type: str,
        handler: None = None,
        *,
        transactional: Literal[False],
        payload_type: Any = None,
    ) -> Callable[[SideEffectHandlerT], SideEffectHandlerT]: ...

    @overload
    def register(
        self,
        event_type: str,
        handler: TransactionalHandlerT,
        *,
        transactional: Literal[True] = True,
        payload_type: Any = None,
    ) -> TransactionalHandlerT: ...

    @overload
    def register(
        self,
        event_type: str,
        handler: SideEffectHandlerT,
        *,
        transactional: Literal[False],
        payload_type: Any = None,
    ) -> SideEffectHandlerT: ...

    def register(
        self,
        event_type: str,
        handler: Callable[..., Any] | None = None,
        *,
        transactional: bool = True,
        payload_type: Any = None,
    ) -> Callable[..., Any]:
        """Register ``handler`` for ``event_type``; without a handler, act as a decorator.

        The handler's signature is checked now, not at its first delivery: a transactional
        handler must accept ``(event, connection)`` (or ``(event, session)`` with the second
        parameter annotated as an ORM ``Session``), a side-effect one ``(event)``, and an
        ``Event[X]`` annotation must agree with ``payload_type`` (when the annotation names
        a class and ``payload_type`` is not given, it becomes the payload type).
        Raises :class:`~outboxkit.errors.ConfigurationError` for a handler of the wrong
        shape, :class:`~outboxkit.errors.UnknownEventTypeError` when the type has no route
        and :class:`~outboxkit.errors.DuplicateHandlerError` when it already has a handler.
        """

        def add(func: Callable[..., Any]) -> Callable[..., Any]:
            declared = check_handler(
                event_type, func, transactional=transactional, payload_type=payload_type
            )
            if declared is not None and self.check_payload_type is not None:
                self.check_payload_type(event_type, declared)
            service = self.routing.service_of(event_type)
            if self._started:
                logger.warning(
                    "handler for %s registered after start(): its service is served only if "
                    "it already was",
                    event_type,
                )
            with self._lock:
                existing = self._handlers.get(event_type)
                if existing is not None:
                    raise DuplicateHandlerError(
                        f"event type {event_type!r} already has a handler: "
                        f"{_describe(existing.func)}"
                    )
                self._handlers[event_type] = HandlerSpec(
                    event_type=event_type,
                    service=service,
                    func=func,
                    transactional=transactional,
                    payload_type=declared,
                    session=transactional and takes_session(func),
                )
            return func

        return add if handler is None else add(handler)

    def get(self, event_type: str) -> HandlerSpec | None:
        with self._lock:
            return self._handlers.get(event_type)

    def services(self) -> list[str]:
        """Services that have at least one handler here, sorted."""
        with self._lock:
            return sorted({spec.service for spec in self._handlers.values()})

    def event_types(self, service: str | None = None) -> list[str]:
        with self._lock:
            return sorted(
                t for t, spec in self._handlers.items() if service in (None, spec.service)
            )


def _describe(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", "?")
    name = getattr(func, "__qualname__", repr(func))
    return f"{module}.{name}"
