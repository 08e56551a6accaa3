"""Turning ``module:attribute`` into an outboxkit Engine, with errors that say what was found.

The attribute may be an :class:`~outboxkit.engine.Engine` or a *factory*: a callable taking
no arguments that returns one. Anything else is named in the error instead of being called
(a handler function given by mistake must not run) or reported as a bare type name.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from outboxkit.engine import Engine
from outboxkit.errors import ConfigurationError


def _is_factory(obj: Any) -> bool:
    """A plain callable that can be called without arguments (not a class, not a handler)."""
    if inspect.isclass(obj) or not callable(obj):
        return False
    try:
        inspect.signature(obj).bind()
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (some builtins): do not guess
        return False
    return True


def _describe(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def load_engine(spec: str) -> Engine:
    """Import ``module:attribute``; the attribute is an Engine or a no-argument factory of one.

    Raises :class:`~outboxkit.errors.ConfigurationError` naming what was found otherwise.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"expected APP as module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot load {spec}: cannot import module {module_name!r}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"cannot load {spec}: {module_name} has no attribute {attribute!r}"
            ) from None
    if isinstance(obj, Engine):
        return obj
    import sqlalchemy as sa

    if isinstance(obj, sa.Engine):
        raise ConfigurationError(
            f"{spec} is a SQLAlchemy Engine, not an outboxkit Engine: name the outboxkit "
            "Engine (or a factory of one), or use --database-url with --service"
        )
    if callable(obj) and not _is_factory(obj):
        raise ConfigurationError(
            f"{spec} is a callable that needs arguments (a handler?), not an outboxkit Engine "
            "or a no-argument factory of one; it was not called"
        )
    if callable(obj):
        built = obj()
        if isinstance(built, Engine):
            return built
        raise ConfigurationError(f"{spec}() returned {_describe(built)}, not an outboxkit Engine")
    raise ConfigurationError(f"{spec} is {_describe(obj)}, not an outboxkit Engine")
