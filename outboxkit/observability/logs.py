"""What outboxkit puts in its log records, so log pipelines can rely on it.

Every line about one event names its event id, type, service and topic in the message
(for people) and as ``extra=`` fields on the record (for structured pipelines, e.g. a JSON
formatter that copies record attributes). The field names are fixed here and documented in
``docs/running.md``:

=====================  ====================================================
``outbox_event_id``    the event id (``PublishRequest.event_id``)
``outbox_event_type``  the event type (``biz_type`` column)
``outbox_service``     the service whose table and topic the event uses
``outbox_topic``       the topic (Kafka) or stream (Redis) of the service
``outbox_id``          the row's primary key in the service's outbox table
``outbox_ids``         several row ids (the republish sweep)
``outbox_outage``      which loop an outage line is about (``relay orders``)
=====================  ====================================================

The library configures no handlers; levels are fixed: DEBUG per event, INFO per lifecycle
step, WARNING per retried failure (with the handler's traceback), ERROR per dead event.

What they never carry is taken out here too: this module is the one scrubbing path of the
package (``docs/security.md``, "Secrets and payload values"). :func:`scrub_error` and
:func:`describe_error` for errors (the consumers' handler errors, the repository's, health
checks), :func:`describe_validation` and :func:`value_kind` for the payload codecs,
:func:`mask_url`, :func:`mask_settings` and the ``*_repr`` helpers for passwords,
:func:`printable` for text the command line prints.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.exc import DBAPIError, StatementError

EVENT_ID = "outbox_event_id"
EVENT_TYPE = "outbox_event_type"
SERVICE = "outbox_service"
TOPIC = "outbox_topic"
OUTBOX_ID = "outbox_id"


def event_fields(
    *,
    event_id: str | None,
    event_type: str,
    service: str,
    topic: str,
    outbox_id: int | None = None,
) -> dict[str, Any]:
    """The ``extra=`` fields of a log record about one event."""
    return {
        EVENT_ID: event_id,
        EVENT_TYPE: event_type,
        SERVICE: service,
        TOPIC: topic,
        OUTBOX_ID: outbox_id,
    }


#: What stands for a secret or a value taken out of a message.
MASKED = "***"

#: ``scheme://user:password@`` -> the part before the password, and the password.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (any scheme: SQL,
    Redis, Kafka; also URLs SQLAlchemy cannot parse, and URLs inside a message).

    ``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``. Text without a URL
    carrying credentials comes back unchanged.
    """
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


#: Names of settings whose values are secrets: kafka-python's ``sasl_plain_password``,
#: ``ssl_password``, ``sasl_oauth_token_provider``; librdkafka's ``sasl.password``,
#: ``ssl.key.password``, ``ssl.key.pem``, ``sasl.oauthbearer.client.secret``; JAAS lines.
_SECRET_SETTING = re.compile(r"pass|secret|token|credential|private|key[._]pem|jaas", re.I)


def mask_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` (client options) with every secret's value as ``***``, by
    name (:data:`_SECRET_SETTING`); what it does not name is kept."""
    return {k: MASKED if _SECRET_SETTING.search(str(k)) else v for k, v in settings.items()}


def settings_repr(settings: Mapping[str, Any]) -> str:
    """The repr of ``settings`` without secrets: for ``attrs.field(repr=...)``."""
    return repr(mask_settings(settings))


def url_repr(url: str | None) -> str:
    """The repr of ``url`` with its password masked: for ``attrs.field(repr=...)``."""
    return repr(url if url is None else mask_url(url))


def hide_parameters(exc: BaseException) -> BaseException:
    """Make ``exc`` (and the SQLAlchemy errors it chains) render without bound parameters.

    SQLAlchemy appends ``[parameters: ...]`` to a statement error's text; for an insert
    into the outbox that is the whole payload, personal data included, which would then
    reach every log and error report the exception passes through. An engine created with
    ``hide_parameters=True`` leaves them out; the caller's engine may not be, so every error
    the repository raises is scrubbed here first. Returns ``exc``.

    Parameters are not the only way a value reaches a driver's message (PostgreSQL's
    ``DETAIL`` and ``LINE`` lines, quoted values): :func:`scrub_error` removes those too.
    """
    for current in _chain(exc):
        if isinstance(current, StatementError):
            current.hide_parameters = True
    return exc


# ---------------------------------------------------------------- scrubbing values out


#: An SQL string literal (doubled quotes and backslash escapes inside): a value written
#: into a statement's text.
_SQL_LITERAL = re.compile(r"'(?:[^'\\]|''|\\.)*'")
#: Names a statement mentions: its words and its quoted identifiers.
_SQL_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
#: A text quoted in a driver's message (shortest match; see :func:`_mask_quoted`).
_QUOTED = re.compile(r"""(["'])([^"'\n]*)\1""")
#: An apostrophe inside a word (``doesn't``), which quotes nothing.
_APOSTROPHE = re.compile(r"(?<=[A-Za-z])'(?=[A-Za-z])")
#: A name the driver quotes without it being in the statement (MariaDB's primary key).
_DRIVER_NAMES = frozenset({"PRIMARY"})
#: Attributes of a driver error's diagnostics that hold names, never values (psycopg).
_DIAG_NAMES = ("constraint_name", "table_name", "column_name", "schema_name", "datatype_name")


def scrub_error(exc: BaseException) -> BaseException:
    """Make ``exc`` and every exception it chains render without a value of the data.

    For each SQLAlchemy statement error and the driver error it wraps: parameters hidden
    (:func:`hide_parameters`); the driver's message cut to its first line (PostgreSQL's
    ``DETAIL: Key (card)=(4111...)``, ``LINE 1:`` echoing the statement with psycopg2's
    parameters written into it, ``HINT`` and ``CONTEXT`` go); every text it quotes masked
    as ``'***'`` unless it is a name the statement or the driver's diagnostics use (a
    table, column or constraint: ``invalid input syntax for type uuid: "***"``, ``Duplicate
    entry '***' for key 'PRIMARY'``); string literals of the statement masked; passwords of
    URLs masked everywhere. Errors without a statement (a refused connection) carry no
    value and keep their text but for passwords.

    Exceptions are changed in place (their ``args``), so their ``str()``, their traceback in
    a log line and anything that wraps them later all show the scrubbed text. An exception
    of the application's own (``ValueError(f"bad card {card}")``) keeps its words: its
    message is the application's. Returns ``exc``.
    """
    for current in _chain(exc):
        if isinstance(current, StatementError):
            _scrub_statement_error(current)
        else:
            _mask_args(current, mask_url)
    return exc


def describe_error(exc: BaseException) -> str:
    """``"<type>: <message>"`` of ``exc`` after :func:`scrub_error`, for a ``last_error``,
    a receipt or a log line. A validation error (pydantic's) is described by its fields and
    what each expected (:func:`describe_validation`), never by the value it refused."""
    summary = describe_validation(exc)
    if summary is not None:
        return f"{type(exc).__name__}: {summary}"
    scrub_error(exc)
    return f"{type(exc).__name__}: {exc}"


def describe_validation(exc: BaseException) -> str | None:
    """``payload.card: Input should be a valid UUID; payload.n: Field required`` for a
    pydantic ``ValidationError`` (``None`` for any other exception): where each error is and
    what was expected, without the refused input (pydantic's ``input_value=``) and without
    the detail after the first comma, which can quote it (``found `4` at 1``; a
    validator's own ``Value error, ...``)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors) or not hasattr(exc, "error_count"):
        return None
    try:
        found = errors(include_input=False, include_url=False, include_context=False)
    except TypeError:
        return None
    parts = []
    for error in found:
        where = ".".join(str(part) for part in error.get("loc", ())) or "(root)"
        message = str(error.get("msg", error.get("type", "invalid")))
        kind = str(error.get("type", ""))
        if not kind.startswith(("literal_", "enum")):  # these list what was expected
            message = message.split(",", 1)[0]
        parts.append(f"{printable(where)}: {message}")
    return "; ".join(parts) or "invalid"


def value_kind(value: Any) -> str:
    """What ``value`` is, never what it says: ``a string of 19 characters``, ``an
    integer``, ``an array of 3 items``, ``null``; for messages about a value that does not
    fit (JSON's names for JSON values)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string of {_count(len(value), 'character')}"
    if isinstance(value, (list, tuple)):
        return f"an array of {_count(len(value), 'item')}"
    if isinstance(value, dict):
        return f"an object of {_count(len(value), 'member')}"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return f"a {type(value).__qualname__}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


#: C0 and C1 control characters but tab, and DEL: a terminal acts on them (ESC starts a
#: sequence that can retitle the window, clear the screen or redefine keys; BEL rings).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every terminal control character written as an escape (ESC as
    ``\\x1b``, BEL as ``\\x07``) so printing it cannot drive the terminal; line breaks
    are escaped too unless ``newlines``. Tabs are kept."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return f"\\u{ord(char):04x}" if ord(char) > 0xFF else f"\\x{ord(char):02x}"

    escaped = _CONTROL.sub(escape, text)
    if not newlines:
        escaped = escaped.replace("\r", "\\r").replace("\n", "\\n")
    return escaped


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it chains (causes, contexts, a statement error's
    ``orig``), each once."""
    found: list[BaseException] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo += [current.__cause__, current.__context__]
        if isinstance(current, StatementError) and isinstance(current.orig, BaseException):
            todo.append(current.orig)
    return found


def _scrub_statement_error(exc: StatementError) -> None:
    exc.hide_parameters = True
    if not exc.statement:  # a connection refused: no data in it
        _mask_args(exc, mask_url)
        if exc.orig is not None:
            _mask_args(exc.orig, mask_url)
        return
    statement = _SQL_LITERAL.sub(f"'{MASKED}'", exc.statement)
    names = set(_SQL_WORD.findall(statement)) | _DRIVER_NAMES
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    names.update(str(n) for n in (getattr(diag, a, None) for a in _DIAG_NAMES) if n)

    def scrub(text: str) -> str:
        return _mask_quoted(_first_line(mask_url(text)), names)

    exc.statement = mask_url(statement)
    if orig is not None:
        _mask_args(orig, scrub)
        if isinstance(exc, DBAPIError):  # its text was made from the driver's, when raised
            cls = type(orig)
            exc.args = (f"({cls.__module__}.{cls.__name__}) {orig}",)
            return
    _mask_args(exc, scrub)


def _mask_args(exc: BaseException, scrub: Callable[[str], str]) -> None:
    """Rewrite the string arguments ``exc`` renders from (drivers' errors, ``ValueError``)."""
    with contextlib.suppress(AttributeError, TypeError):  # args read-only in some types
        exc.args = tuple(scrub(a) if isinstance(a, str) else a for a in exc.args)


def _first_line(text: str) -> str:
    """A driver's message without the lines after its first (PostgreSQL's ``DETAIL``,
    ``HINT``, ``CONTEXT`` and ``LINE n:`` with its caret)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def _mask_quoted(text: str, names: set[str]) -> str:
    """``text`` with every quoted part masked but the names in ``names``.

    Drivers quote values without escaping them (``"a"b"``), so a value may hold quotes:
    apostrophes inside words and the names are set aside first, then everything from the
    first remaining quote to the last of the same kind is masked, whatever lies between.
    """
    kept: list[str] = []
    text = _APOSTROPHE.sub("\x01", text)  # doesn't, O'Brien: not quotes

    def keep(match: re.Match[str]) -> str:
        parts = match.group(2).split(".")
        if parts[-1] in names and all(_SQL_WORD.fullmatch(p) for p in parts):
            kept.append(match.group())
            return f"\x00{len(kept) - 1}\x00"
        return match.group()

    text = _QUOTED.sub(keep, text)
    for quote in "\"'":
        first, last = text.find(quote), text.rfind(quote)
        if first != -1:
            end = last if last > first else len(text) - 1
            text = f"{text[:first]}{quote}{MASKED}{quote}{text[end + 1 :]}"
    text = re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text)
    return text.replace("\x01", "'")
