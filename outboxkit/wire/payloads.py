"""Payload codecs: application objects to JSON values on publish, and back on consume.

The event shell and the envelope stay the documented JSON (:mod:`outboxkit.wire.envelope`); a
payload codec only decides what the ``payload`` field holds. :class:`JsonPayloadCodec`, the
default, writes plain JSON a Go consumer reads as is:

========================  =====================================================
Python value              JSON value
========================  =====================================================
``datetime`` / ``date``   ISO-8601 string (an aware datetime keeps its offset)
``Decimal``               string (no float rounding)
``UUID``                  string
``Enum``                  its ``value``
dataclass / attrs class   object of its fields (by field name)
pydantic v2 model         ``model.model_dump(mode="json")``
``tuple``/``set``         array (a set sorted when its items sort)
``bytes``                 base64 string
========================  =====================================================

Decoding is driven by the payload type an event type declares (``payload_type=`` or an
``Event[X]`` annotation on its handler): the field types of the dataclass, attrs class or
pydantic model say what each JSON value becomes, so a tuple, a ``Decimal`` or a
``datetime`` comes back as one. Without a declared type the handler sees the JSON values
(strings, lists). Dict keys must be strings: an int key would come back a string, so it is
rejected at publish rather than changed.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import enum
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar, Union

import attrs

from outboxkit.errors import ConfigurationError, InvalidEventError, PayloadDecodeError
from outboxkit.messages import Event
from outboxkit.observability.logs import describe_validation
from outboxkit.observability.logs import value_kind as _kind  # never the value itself

T = TypeVar("T")
#: What a JSON array decodes into, by declared origin (``Sequence`` becomes a list).
_ARRAYS: tuple[Any, ...] = (list, Sequence, tuple, set, frozenset)
#: Classes decoded from a JSON scalar or string.
_SCALARS: tuple[type, ...] = (
    bool,
    int,
    float,
    str,
    datetime,
    date,
    time,
    Decimal,
    uuid.UUID,
    bytes,
)
#: Exact types written as they are (subclasses such as enums take the slow path).
_JSON_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


class PayloadCodec(abc.ABC):
    """Turns payloads into JSON values for the event shell and back.

    Implementations must be thread-safe (one codec serves every publishing and consuming
    thread) and deterministic: :meth:`decode` failing is taken as final.
    """

    @abc.abstractmethod
    def encode(self, payload: Any) -> Any:
        """A JSON value (dict, list, str, int, float, bool, None) for ``payload``.

        Raises :class:`~outboxkit.errors.InvalidEventError` for a value it cannot write
        without changing it.
        """

    @abc.abstractmethod
    def decode(self, data: Any, payload_type: Any) -> Any:
        """``data`` (a JSON value) as an instance of ``payload_type``.

        Raises :class:`PayloadDecodeError` when it does not fit.
        """

    def check_payload_type(self, payload_type: Any) -> None:
        """Raise :class:`~outboxkit.errors.ConfigurationError` when :meth:`decode` could
        never produce ``payload_type``; called when a handler is registered, so such a
        mistake fails at start-up rather than killing every event. Accepts all by default.
        """
        return None


@attrs.frozen(kw_only=True)
class PayloadCodecs:
    """The codec of each event type: ``default`` unless ``by_event_type`` names another."""

    default: PayloadCodec = attrs.field(factory=lambda: JsonPayloadCodec())  # noqa: PLW0108
    by_event_type: Mapping[str, PayloadCodec] = attrs.field(factory=dict, converter=dict)

    def for_type(self, event_type: str) -> PayloadCodec:
        return self.by_event_type.get(event_type, self.default)


def _is_plain_json(value: Any) -> bool:
    """Whether ``value`` is made of dicts with string keys, lists and JSON scalars only.

    One walk without allocations: cheaper than building the converted copy, and most
    payloads are exactly this.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        cls = type(item)
        if cls in _JSON_SCALARS:
            continue
        if cls is dict:
            for key in item:
                if type(key) is not str:
                    return False
            stack.extend(item.values())
        elif cls is list:
            stack.extend(item)
        else:
            return False
    return True


def _is_pydantic_model(value: Any) -> bool:
    """Duck-typed so pydantic stays optional: v2 models have these two methods."""
    return hasattr(value, "model_dump") and hasattr(value, "model_validate")


class JsonPayloadCodec(PayloadCodec):
    """The default codec: plain JSON, typed by dataclass/attrs/pydantic field types."""

    def encode(self, payload: Any) -> Any:
        if _is_plain_json(payload):
            return payload  # the common case: nothing to convert, nothing to copy
        return self._encode(payload, "payload")

    def _encode(self, value: Any, path: str) -> Any:
        cls = type(value)
        # Fast paths for plain JSON, the common case (most payloads are dicts of these).
        if cls in _JSON_SCALARS:
            return value
        if cls is dict:
            return self._encode_mapping(value, path)
        if cls is list:
            return [self._encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, enum.Enum):  # before str/int: StrEnum and IntEnum are both
            return self._encode(value.value, path)
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, (date, time)):
            return value.isoformat()
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise InvalidEventError(f"{path}: {value} cannot be written as JSON")
            return str(value)
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, (bytes, bytearray)):
            return base64.b64encode(bytes(value)).decode("ascii")
        if _is_pydantic_model(value) and not isinstance(value, type):
            return value.model_dump(mode="json")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: self._encode(getattr(value, f.name), f"{path}.{f.name}")
                for f in dataclasses.fields(value)
            }
        if attrs.has(type(value)):
            return {
                a.name: self._encode(getattr(value, a.name), f"{path}.{a.name}")
                for a in attrs.fields(type(value))
            }
        if isinstance(value, Mapping):
            return self._encode_mapping(value, path)
        if isinstance(value, (set, frozenset)):
            items = [self._encode(v, f"{path}[]") for v in value]
            try:
                return sorted(items)
            except TypeError:
                return items
        if isinstance(value, (list, tuple)):
            return [self._encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        raise InvalidEventError(
            f"{path} is not JSON-serialisable: {type(value).__qualname__} (give the event "
            "type a payload codec that knows it)"
        )

    def _encode_mapping(self, value: Mapping[Any, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for raw_key, item in value.items():
            key = raw_key.value if isinstance(raw_key, enum.Enum) else raw_key
            if not isinstance(key, str):
                raise InvalidEventError(
                    f"{path} has the non-string key {key!r}: JSON would silently turn "
                    "it into a string"
                )
            out[key] = self._encode(item, f"{path}.{key}")
        return out

    def check_payload_type(self, payload_type: Any) -> None:
        self._check(payload_type, _name(payload_type), set())

    def _check(self, tp: Any, path: str, seen: set[type]) -> None:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any or tp is object or origin is Literal:
            return
        if origin is Union or origin is types.UnionType:
            for arm in args:
                self._check(arm, path, seen)
            return
        if origin is typing.Annotated:
            self._check(args[0], path, seen)
            return
        if origin in _ARRAYS:
            for arm in args:
                if arm is not Ellipsis:
                    self._check(arm, f"{path}[]", seen)
            return
        if origin in (dict, Mapping):
            if args and args[0] is not str:
                raise ConfigurationError(
                    f"{path}: JSON object keys are strings, not {_name(args[0])}"
                )
            if args:
                self._check(args[1], f"{path}[]", seen)
            return
        if origin is not None or not isinstance(tp, type):
            raise ConfigurationError(f"{path}: {_name(tp)} cannot be decoded from JSON")
        if tp in seen or tp in _SCALARS or tp in _ARRAYS or tp is dict or tp is type(None):
            return
        seen.add(tp)
        if _is_pydantic_model(tp) or issubclass(tp, enum.Enum):
            return
        if dataclasses.is_dataclass(tp) or attrs.has(tp):
            try:
                hints = typing.get_type_hints(tp, include_extras=True)
            except Exception as exc:
                raise ConfigurationError(
                    f"{path}: the field types of {tp.__qualname__} cannot be resolved: {exc}"
                ) from exc
            for name, hint in hints.items():
                self._check(hint, f"{path}.{name}", seen)
            return
        raise ConfigurationError(
            f"{path}: {tp.__qualname__} is not a dataclass, attrs class, pydantic model, enum "
            "or JSON type: the default payload codec cannot build it"
        )

    def decode(self, data: Any, payload_type: Any) -> Any:
        return self._decode(data, payload_type, "payload")

    def _decode(self, data: Any, tp: Any, path: str) -> Any:
        if tp is Any or tp is object:
            return data
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Union or origin is types.UnionType:
            if data is None and type(None) in args:
                return None
            errors = []
            for arm in args:
                if arm is type(None):
                    continue
                try:
                    return self._decode(data, arm, path)
                except PayloadDecodeError as exc:
                    errors.append(str(exc))
            raise PayloadDecodeError(f"fits none of {_name(tp)}: {'; '.join(errors)}", path=path)
        if origin is Literal:
            if data in args:
                return data
            raise PayloadDecodeError(f"expected one of {args!r}, got {_kind(data)}", path=path)
        if origin is typing.Annotated:
            return self._decode(data, args[0], path)
        if origin in _ARRAYS or tp in _ARRAYS:
            if not isinstance(data, list):
                raise PayloadDecodeError(f"expected an array, got {_kind(data)}", path=path)
            if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
                if len(args) != len(data):
                    raise PayloadDecodeError(
                        f"expected {len(args)} items, got {len(data)}", path=path
                    )
                return tuple(
                    self._decode(v, a, f"{path}[{i}]")
                    for i, (v, a) in enumerate(zip(data, args, strict=True))
                )
            item = args[0] if args else Any
            items = [self._decode(v, item, f"{path}[{i}]") for i, v in enumerate(data)]
            container = (
                origin
                if origin not in (None, Sequence)
                else (tp if tp in _ARRAYS and tp is not Sequence else list)
            )
            return container(items)
        if origin in (dict, Mapping) or tp is dict:
            if not isinstance(data, dict):
                raise PayloadDecodeError(f"expected an object, got {_kind(data)}", path=path)
            value_type = args[1] if len(args) == 2 else Any
            members = enumerate(data.items())  # by position: a key is data, not a name
            return {k: self._decode(v, value_type, f"{path}[{i}]") for i, (k, v) in members}
        if not isinstance(tp, type):
            raise PayloadDecodeError(f"cannot decode into {_name(tp)}", path=path)
        return self._decode_class(data, tp, path)

    def _decode_class(self, data: Any, tp: type[Any], path: str) -> Any:
        if _is_pydantic_model(tp):
            try:
                return tp.model_validate(data)
            except Exception as exc:  # pydantic.ValidationError, without importing pydantic
                why = describe_validation(exc) or type(exc).__name__  # never input_value=
                why = f"not a valid {tp.__qualname__}: {why}"
                raise PayloadDecodeError(why, path=path) from exc
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp, path)
            fields = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(tp) if f.init}
            return self._construct(data, tp, fields, path)
        if attrs.has(tp):
            hints = _hints(tp, path)
            fields = {a.alias or a.name: hints.get(a.name, Any) for a in attrs.fields(tp) if a.init}
            return self._construct(
                data,
                tp,
                fields,
                path,
                names={(a.alias or a.name): a.name for a in attrs.fields(tp)},
            )
        if issubclass(tp, enum.Enum):
            try:
                return tp(data)
            except ValueError as exc:
                raise PayloadDecodeError(_not_valid(tp, data), path=path) from exc
        if tp is bool:
            if isinstance(data, bool):
                return data
        elif tp is int:
            if isinstance(data, int) and not isinstance(data, bool):
                return data
        elif tp is float:
            if isinstance(data, (int, float)) and not isinstance(data, bool):
                return float(data)
        elif tp is str:
            if isinstance(data, str):
                return data
        elif tp in (datetime, date, time, Decimal, uuid.UUID, bytes):
            return _from_text(data, tp, path)
        elif tp is type(None):
            if data is None:
                return None
        else:
            raise PayloadDecodeError(f"cannot decode into {tp.__qualname__}", path=path)
        raise PayloadDecodeError(f"expected {tp.__qualname__}, got {_kind(data)}", path=path)

    def _construct(
        self,
        data: Any,
        tp: type[Any],
        fields: Mapping[str, Any],
        path: str,
        names: Mapping[str, str] | None = None,
    ) -> Any:
        if not isinstance(data, dict):
            raise PayloadDecodeError(
                f"expected an object for {tp.__qualname__}, got {_kind(data)}", path=path
            )
        kwargs = {}
        for arg, field_type in fields.items():
            key = (names or {}).get(arg, arg)
            if key in data:
                kwargs[arg] = self._decode(data[key], field_type, f"{path}.{key}")
        try:
            return tp(**kwargs)
        except Exception as exc:  # a missing field, a validator (its message quotes the value)
            why = ", ".join(key for key in fields if key not in kwargs)
            why = f"{type(exc).__name__}{f' (absent: {why})' if why else ''}"
            raise PayloadDecodeError(f"cannot build {tp.__qualname__}: {why}", path=path) from exc


def _from_text(data: Any, tp: type[Any], path: str) -> Any:
    if tp is Decimal and isinstance(data, (int, float)) and not isinstance(data, bool):
        return Decimal(str(data))
    if not isinstance(data, str):
        raise PayloadDecodeError(f"expected {tp.__qualname__} text, got {_kind(data)}", path=path)
    try:
        if tp is datetime:
            # Python 3.10's fromisoformat does not read the "Z" suffix Go writes.
            return datetime.fromisoformat(data[:-1] + "+00:00" if data.endswith("Z") else data)
        if tp is date:
            return date.fromisoformat(data)
        if tp is time:
            return time.fromisoformat(data)
        if tp is Decimal:
            return Decimal(data)
        if tp is uuid.UUID:
            return uuid.UUID(data)
        return base64.b64decode(data.encode("ascii"), validate=True)
    except (ValueError, InvalidOperation) as exc:
        raise PayloadDecodeError(_not_valid(tp, data), path=path) from exc


def _hints(tp: type[Any], path: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp, include_extras=True)
    except Exception as exc:
        raise PayloadDecodeError(
            f"the field types of {tp.__qualname__} cannot be resolved: {exc}", path=path
        ) from exc


def _not_valid(tp: type[Any], data: Any) -> str:
    return f"not a valid {tp.__qualname__} (got {_kind(data)})"


def _name(tp: Any) -> str:
    if typing.get_origin(tp) is not None:  # list[int]: its qualname would say "list"
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__qualname__", None) or repr(tp)


def decode_payload(event: Event[Any], payload_type: Any, codecs: PayloadCodecs) -> Event[Any]:
    """``event`` with its payload decoded into ``payload_type`` by its type's codec.

    Raises :class:`PayloadDecodeError` naming the event type, the payload type and the
    field, never the value; any exception of a custom codec counts as a decode failure too.
    """
    codec = codecs.for_type(event.event_type)
    try:
        payload = codec.decode(event.payload, payload_type)
    except PayloadDecodeError as exc:
        raise PayloadDecodeError(
            f"not a valid {_name(payload_type)} for {event.event_type}: {exc.reason}", path=""
        ) from exc
    except Exception as exc:  # its message may quote the payload: not repeated
        why = describe_validation(exc) or "its message withheld"
        raise PayloadDecodeError(
            f"{type(codec).__qualname__} failed to decode a {_name(payload_type)} for "
            f"{event.event_type}: {type(exc).__name__}: {why}",
            path="",
        ) from exc
    return attrs.evolve(event, payload=payload)
