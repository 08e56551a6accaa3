"""Checking a handler when it is registered, so a wrong one fails at start-up, and calling it.

Without this check a handler of the wrong arity is accepted, fails at its first delivery and
is retried until the event goes dead (20 attempts, about 24 minutes with the default
backoff). :func:`check_handler` turns that into a :class:`ConfigurationError` at import
time, naming the handler, its signature and the shape it needs. It also reads the payload
type from an ``Event[X]`` annotation, so the annotation mypy checks is the one the consumer
decodes by.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.errors import ConfigurationError
from outboxkit.messages import Event

#: How a handler that takes a ``Session`` gets it: ``factory(bind=connection,
#: join_transaction_mode="rollback_only")`` (``Session`` itself, or a ``sessionmaker``).
SessionFactory = Callable[..., Session]

#: The text of an annotation that names an ORM session but cannot be resolved (imported
#: only under ``TYPE_CHECKING``).
_SESSION_TEXT = re.compile(r"(?:[A-Za-z_][\w.]*\.)?Session")

#: Annotations that say "the payload as JSON values": nothing to decode into.
_JSON_TYPES: frozenset[object] = frozenset({dict, list, str, int, float, bool, object, type(None)})


def describe(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a handler, for messages."""
    module = getattr(func, "__module__", "?")
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}"


def check_handler(
    event_type: str, func: Callable[..., Any], *, transactional: bool, payload_type: Any
) -> Any:
    """Raise :class:`ConfigurationError` unless ``func`` can be called as a handler.

    Returns the payload type to decode into: ``payload_type`` when given, else the class
    named by an ``Event[X]`` annotation of the first parameter (``None``: the JSON payload
    as is). An annotation that disagrees with ``payload_type`` is an error too.
    """
    if not callable(func):
        raise ConfigurationError(
            f"handler of {event_type!r} is not callable: {func!r} ({type(func).__name__})"
        )
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return payload_type
    shape = "(event, connection) or (event, session: Session)" if transactional else "(event)"
    if not _accepts(signature, 2 if transactional else 1):
        hint = ""
        if transactional and _accepts(signature, 1):
            hint = "; for a handler that takes only the event, pass transactional=False"
        elif not transactional and _accepts(signature, 2):
            hint = "; a handler that takes a connection must be transactional=True"
        kind = "a transactional" if transactional else "a side-effect"
        raise ConfigurationError(
            f"handler {describe(func)}{signature} of {event_type!r} cannot be called as "
            f"{kind} handler {shape}{hint}"
        )
    declared = _declared_payload_type(event_type, func, signature, given=payload_type is not None)
    if payload_type is None:
        if declared is None or declared in _JSON_TYPES or not isinstance(declared, type):
            return None
        return declared
    if declared is not None and declared is not Any and declared != payload_type:
        raise ConfigurationError(
            f"handler {describe(func)} of {event_type!r} is annotated Event[{_name(declared)}] "
            f"but registered with payload_type={_name(payload_type)}"
        )
    return payload_type


def takes_session(func: Callable[..., Any]) -> bool:
    """Whether a transactional handler's second parameter is annotated as an ORM
    :class:`~sqlalchemy.orm.Session` (or a subclass): it then gets a session bound to the
    consume transaction instead of the connection. Unannotated means the connection."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    if len(params) < 2 or params[1].annotation is inspect.Parameter.empty:
        return False
    annotation = params[1].annotation
    if isinstance(annotation, str):
        text = annotation.replace(" ", "").strip("'\"")
        holder = _resolve_in(func)
        try:

            def probe() -> None: ...

            probe.__annotations__ = {"session": annotation}
            annotation = typing.get_type_hints(probe, globalns=holder)["session"]
        except Exception:
            return _SESSION_TEXT.fullmatch(text) is not None
    return isinstance(annotation, type) and issubclass(annotation, Session)


def call_with_session(
    func: Callable[..., Any],
    event: Event[Any],
    connection: Connection,
    session_factory: SessionFactory,
) -> Any:
    """Call a handler that takes a ``Session`` with one bound to ``connection``'s
    transaction, and flush what it left unflushed before the row is marked.

    The session joins in ``rollback_only`` mode: its ``commit()`` flushes without committing
    the consume transaction (that happens with the mark), and its ``rollback()`` rolls the
    consume transaction back, which fails the attempt (see :mod:`outboxkit.consume.handler_scope`).
    """
    transaction = connection.get_transaction()
    with session_factory(bind=connection, join_transaction_mode="rollback_only") as session:
        value = func(event, session)
        current = connection.get_transaction()
        if current is not None and current is transaction and current.is_active:
            session.flush()
    return value


def _accepts(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _declared_payload_type(
    event_type: str, func: Callable[..., Any], signature: inspect.Signature, *, given: bool
) -> Any:
    """``X`` of an ``Event[X]`` annotation on the first parameter, or ``None``.

    Only that one annotation is resolved, so names imported under ``TYPE_CHECKING`` for
    the other parameters do not matter. An ``Event[...]`` annotation that cannot be
    resolved (a class defined inside a function) is an error unless ``payload_type`` was
    given: the handler would otherwise receive a dict while mypy believes otherwise.
    """
    params = list(signature.parameters.values())
    if not params or params[0].annotation is inspect.Parameter.empty:
        return None
    annotation = params[0].annotation
    if isinstance(annotation, str):
        holder = _resolve_in(func)
        if holder is None:
            return None

        def probe() -> None: ...

        probe.__annotations__ = {"event": annotation}
        try:
            annotation = typing.get_type_hints(probe, globalns=holder)["event"]
        except Exception as exc:
            if given or not annotation.replace(" ", "").startswith("Event["):
                return None
            raise ConfigurationError(
                f"handler {describe(func)} of {event_type!r}: its annotation {annotation!r} "
                f"cannot be resolved ({type(exc).__name__}: {exc}); define the payload class "
                "at module level or pass payload_type="
            ) from exc
    if typing.get_origin(annotation) is Event:
        args = typing.get_args(annotation)
        return args[0] if args and args[0] is not Any else None
    return None


def _resolve_in(func: Callable[..., Any]) -> dict[str, Any] | None:
    """The globals an annotation of ``func`` is written against."""
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    target = inspect.unwrap(getattr(target, "__func__", target))
    if not inspect.isfunction(target):  # a callable object: its class's __call__
        target = type(target).__call__
    namespace = getattr(target, "__globals__", None)
    return namespace if isinstance(namespace, dict) else None


def _name(value: Any) -> str:
    return getattr(value, "__qualname__", None) or repr(value)
