"""Logging of the CLI: a validated ``--log-level`` accepted after the subcommand, and client
libraries (kafka-python, librdkafka's wrapper, redis, urllib3) kept at WARNING unless asked.

At INFO kafka-python alone writes over a hundred lines a minute about connections; an
operator wants outboxkit's lifecycle lines. ``--log-level debug`` lets everything through;
``--client-log-level`` sets the client libraries' level explicitly.

Level alone is not enough: kafka-python reports every failed connection attempt at WARNING
or ERROR ("Connection failed: ... ECONNREFUSED", "Bootstrap ... not ready"), 54 of 62 lines
of a worker whose Kafka was down, although outboxkit already says, once per outage, which
broker cannot be reached and why. So the handler the CLI installs re-levels kafka-python's
records about unreachable brokers to INFO (:class:`ClientLogFilter`): those of its
connection layer (:data:`CONNECTION_LOGGERS`), and elsewhere those that carry a connection
error (a metadata refresh, a heartbeat, a fetch that could not reach a node). They are
hidden at the default ``--client-log-level warning`` and shown with ``--client-log-level
info`` or ``debug``; every other WARNING and ERROR of the clients still shows.
"""

from __future__ import annotations

import argparse
import logging

from outboxkit.observability.logs import printable

LEVELS = ("debug", "info", "warning", "error", "critical")
#: Loggers of the client libraries the CLI quiets by default.
CLIENT_LOGGERS = ("kafka", "confluent_kafka", "redis", "urllib3")
#: Loggers of the clients' connection layers (kafka-python 3.x ``kafka.net``, 2.x
#: ``kafka.conn`` and ``kafka.client_async``): one line per connection attempt, re-levelled
#: to INFO by :class:`ClientLogFilter`.
CONNECTION_LOGGERS = ("kafka.net", "kafka.conn", "kafka.client_async")
LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


class TerminalFormatter(logging.Formatter):
    """Log lines with terminal control characters escaped (ESC as ``\\x1b``): a logged
    event type, key or error text read from the broker or a database cannot drive the
    terminal of the operator watching a worker. Line breaks (tracebacks) are kept."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), newlines=True)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether logger ``name`` is one of ``prefixes`` or a descendant of one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class ClientLogFilter(logging.Filter):
    """On the CLI's log handler: connection chatter of the clients re-levelled to INFO, then
    every client record below ``level`` dropped (see the module docstring).

    Only the records of :data:`CLIENT_LOGGERS` are touched; outboxkit's own and the
    application's pass as they are.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        #: The ``--client-log-level``, as a number.
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not _under(record.name, CLIENT_LOGGERS):
            return True
        if record.levelno > logging.INFO and _is_connection_chatter(record):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return record.levelno >= self.level


def _is_connection_chatter(record: logging.LogRecord) -> bool:
    """Whether a kafka-python record only says that a broker could not be reached.

    Every line of a connection layer (:data:`CONNECTION_LOGGERS`) but one with the
    traceback of anything other than a socket error (a crashed I/O loop is a fault of the
    client, and keeps its level); elsewhere in kafka-python (metadata, coordinator,
    fetcher), a line that carries a connection error or says no broker is available.
    """
    if not _under(record.name, ("kafka",)):
        return False
    error = record.exc_info[1] if record.exc_info else None
    if _under(record.name, CONNECTION_LOGGERS):
        return error is None or isinstance(error, OSError)
    if error is not None:
        return _is_connection_error(error)
    args = record.args if isinstance(record.args, tuple) else ()
    if any(_is_connection_error(arg) for arg in args):
        return True
    return isinstance(record.msg, str) and record.msg.startswith(_NO_BROKER_MESSAGES)


#: kafka-python's exceptions for a broker that cannot be reached (names, so the CLI needs
#: no kafka-python; subclasses match through their MRO).
_CONNECTION_ERRORS = frozenset({"KafkaConnectionError", "NodeNotReadyError"})
#: Lines without an exception that say no broker can be reached (kafka.cluster).
_NO_BROKER_MESSAGES = ("No node available",)


def _is_connection_error(value: object) -> bool:
    if isinstance(value, OSError):
        return True
    return isinstance(value, BaseException) and any(
        cls.__name__ in _CONNECTION_ERRORS for cls in type(value).__mro__
    )


def log_level(text: str) -> str:
    """argparse type: one of :data:`LEVELS`, any case; anything else is a usage error."""
    level = text.strip().lower()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid log level {text!r} (choose from {', '.join(LEVELS)})"
        )
    return level


def logging_options() -> argparse.ArgumentParser:
    """A parent parser giving every subcommand ``--log-level`` and ``--client-log-level``.

    Defaults are suppressed, so the option given before the subcommand still counts when it
    is not repeated after it.
    """
    parent = argparse.ArgumentParser(add_help=False)
    add_logging_arguments(parent)
    return parent


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--client-log-level`` on ``parser`` (for subcommands built
    elsewhere, which cannot take :func:`logging_options` as a parent)."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        type=log_level,
        default=argparse.SUPPRESS,
        metavar="LEVEL",
        help=f"{', '.join(LEVELS)} (default: info for worker and migrate, error for demo, "
        "warning for the other commands)",
    )
    group.add_argument(
        "--client-log-level",
        type=log_level,
        default=argparse.SUPPRESS,
        metavar="LEVEL",
        help="level of the kafka, redis and urllib3 loggers (default: warning, "
        "or debug with --log-level debug); their per-connection lines count as info",
    )


def configure_logging(level: str, client_level: str | None = None) -> None:
    """Root logging at ``level`` on stderr; client libraries at ``client_level``, else
    WARNING (or DEBUG when ``level`` is debug), their connection chatter at INFO.

    Like :func:`logging.basicConfig`, it installs a handler only when the root logger has
    none (an embedding program's handlers are left alone, filter included).
    """
    if client_level is None:
        client_level = "debug" if level == "debug" else "warning"
    client = getattr(logging, client_level.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(TerminalFormatter(LOG_FORMAT))
    handler.addFilter(ClientLogFilter(client))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    for installed in logging.getLogger().handlers:  # ours, from an earlier call
        for existing in installed.filters:
            if isinstance(existing, ClientLogFilter):
                existing.level = client
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(client)
