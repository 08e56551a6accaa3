"""Checking a handler when it is registered, so a wrong one fails at start-up.

Without this check a handler of the wrong arity is accepted, fails at its first delivery and
is retried until the event goes dead (20 attempts, about 24 minutes with the default
backoff). :func:`check_handler` turns that into a :class:`ConfigurationError` at import
time, naming the handler, its signature and the shape it needs. It also reads the payload
type from an ``Event[X]`` annotation, so the annotation mypy checks is the one the consumer
decodes by.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from outboxkit.errors import ConfigurationError
from outboxkit.messages import Event

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
    shape = "(event, connection)" if transactional else "(event)"
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
    declared = _declared_payload_type(func, signature)
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


def _accepts(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _declared_payload_type(func: Callable[..., Any], signature: inspect.Signature) -> Any:
    """``X`` of an ``Event[X]`` annotation on the first parameter, or ``None``."""
    params = list(signature.parameters.values())
    if not params:
        return None
    hints: dict[str, Any] = {}
    # A callable object's annotations are on its __call__ method.
    for target in (func, type(func).__call__):
        try:
            hints = typing.get_type_hints(target)
        except Exception:  # unresolvable forward references: no annotation to use
            continue
        if hints:
            break
    hint = hints.get(params[0].name)
    if typing.get_origin(hint) is Event:
        args = typing.get_args(hint)
        return args[0] if args and args[0] is not Any else None
    return None


def _name(value: Any) -> str:
    return getattr(value, "__qualname__", None) or repr(value)
