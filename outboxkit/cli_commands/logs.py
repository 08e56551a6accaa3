"""Logging of the CLI: a validated ``--log-level`` accepted after the subcommand, and client
libraries (kafka-python, librdkafka's wrapper, redis, urllib3) kept at WARNING unless asked.

At INFO kafka-python alone writes over a hundred lines a minute about connections; an
operator wants outboxkit's lifecycle lines. ``--log-level debug`` lets everything through;
``--client-log-level`` sets the client libraries' level explicitly.
"""

from __future__ import annotations

import argparse
import logging

LEVELS = ("debug", "info", "warning", "error", "critical")
#: Loggers of the client libraries the CLI quiets by default.
CLIENT_LOGGERS = ("kafka", "confluent_kafka", "redis", "urllib3")
LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


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
        "or debug with --log-level debug)",
    )


def configure_logging(level: str, client_level: str | None = None) -> None:
    """Root logging at ``level`` on stderr; client libraries at ``client_level``, else
    WARNING (or DEBUG when ``level`` is debug)."""
    logging.basicConfig(level=getattr(logging, level.upper()), format=LOG_FORMAT)
    if client_level is None:
        client_level = "debug" if level == "debug" else "warning"
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(getattr(logging, client_level.upper()))
