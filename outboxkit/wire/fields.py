"""The checks a value read from the broker passes before anything acts on it.

The broker is a trust boundary: in many deployments more programs can write to a topic or a
stream than can write to the outbox's database, so a message may hold anything. The
envelope decoder (:mod:`outboxkit.wire.envelope`) and the receipt decoder
(:mod:`outboxkit.wire.receipt`) run every field that reaches SQL through these checks first,
against the columns it will meet: a row id must fit ``BIGINT``, an id or a type must fit
its ``VARCHAR`` and hold only characters every database stores. A value that would fail in
the database fails here instead, as a :class:`~outboxkit.errors.DecodeError` that the
consumer logs and acknowledges; in the database it would have looked like an outage, and
the message would have come back for ever.

A field that fails is **described, never quoted** (``event_id is a string of 70
characters, over 64``): a reason stays short whatever the message held, and nothing a
message carries reaches a log line or a ``last_error`` through it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from outboxkit.errors import DecodeError
from outboxkit.messages import MAX_ROW_ID
from outboxkit.store import UNSTORABLE, storable

#: The longest reason a JSON parser's error may add to ours (its messages name a position,
#: never the text, but a bound costs nothing).
_PARSER_REASON = 200


def describe(value: object) -> str:
    """What ``value`` is, in a few words and without its content."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "not a finite number"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    return f"a {type(value).__name__}"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(value: bytes | str, what: str) -> Any:
    """``value`` parsed as strict UTF-8 JSON; :class:`DecodeError` naming ``what`` if not.

    Strict: not UTF-8, nested deeper than Python's recursion limit, an integer of more
    digits than Python converts, or ``NaN``/``Infinity`` (which no JSON encoder of outboxkit
    or Go writes) are all refused with a short reason.
    """
    try:
        text = value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise DecodeError(f"{what} is JSON nested too deep") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not UTF-8 (byte {exc.start})") from None
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{what} is not JSON: {str(exc)[:_PARSER_REASON]}") from None


def row_id(value: object, name: str) -> int:
    """``value`` as a row id: an integer from 1 to :data:`~outboxkit.messages.MAX_ROW_ID`
    (``BIGINT``). A boolean, a float or a numeric string is no row id."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{name} is {describe(value)}, not an integer")
    if not 1 <= value <= MAX_ROW_ID:
        raise DecodeError(f"{name} is out of range (1 to 2**63-1)")
    return value


def identifier(value: object, name: str, limit: int) -> str:
    """``value`` as an id or a type: a string, trimmed, of 1 to ``limit`` characters that
    every database stores (``limit`` is the width of the column it will meet)."""
    if not isinstance(value, str):
        raise DecodeError(f"{name} is {describe(value)}, not a string")
    text = value.strip()
    if not text:
        raise DecodeError(f"{name} is empty")
    if len(text) > limit:
        raise DecodeError(f"{name} is a string of {len(text)} characters, over {limit}")
    if not storable(text):
        raise DecodeError(f"{name} holds a NUL character or a lone surrogate")
    return text


def text(value: object, name: str, limit: int) -> str:
    """``value`` as free text of at most ``limit`` characters (``null`` is empty), made
    storable: NUL and lone surrogates become U+FFFD."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DecodeError(f"{name} is {describe(value)}, not a string")
    if len(value) > limit:
        raise DecodeError(f"{name} is a string of {len(value)} characters, over {limit}")
    return UNSTORABLE.sub("\ufffd", value)
