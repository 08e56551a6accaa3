"""The ``outboxkit`` command: ``demo``, ``dev-kafka``, ``worker``, ``migrate``, ``health``, and
for operators ``status``, ``rows``, ``dlq`` (alias ``dead``) and ``purge`` (their code lives
in :mod:`outboxkit.cli`).

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 forced or interrupted.

Signals belong here, not in the library: ``worker`` stops gracefully on the first SIGTERM or
SIGINT (in-flight handlers finish) and exits at once on the second.

``--help`` texts are plain text written for the person at the terminal (:data:`DESCRIPTION`,
each command's ``description``), never this docstring: reST markup and implementation
notes do not belong in a terminal.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import outboxkit.cli.dev_kafka as dev_kafka_command
import outboxkit.cli.dlq as dlq_command
import outboxkit.cli.purge as purge_command
import outboxkit.cli.rows as rows_command
import outboxkit.cli.status as status_command
from outboxkit import __version__
from outboxkit.cli.app_loading import load_engine as _load_engine
from outboxkit.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailedError,
    UsageError,
)
from outboxkit.cli.health import add_health_command
from outboxkit.cli.logs import add_logging_arguments, configure_logging, logging_options
from outboxkit.cli.output import shown
from outboxkit.engine import Engine
from outboxkit.errors import ConfigurationError, OutboxError
from outboxkit.observability.http import MetricsServer

logger = logging.getLogger("outboxkit.cli.main")

#: What ``outboxkit --help`` says above the list of commands (plain text, for a terminal).
DESCRIPTION = """\
The transactional outbox for synchronous Python, from the command line: run an
application's engine (worker, migrate), see and repair its outbox (status, rows, dlq,
purge, health), or try it out (demo, and dev-kafka for a local Kafka-protocol broker).

APP is module:attribute of your outboxkit Engine (or of a function returning one),
for example shop.events:engine.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted (or a worker
forced down by a second signal). "outboxkit COMMAND --help" shows a command's options.
"""

#: What ``outboxkit worker --help`` says about running and stopping (plain text).
WORKER_DESCRIPTION = """\
Run the relay and consumer threads of APP until SIGTERM or SIGINT (Ctrl-C).

The first signal stops gracefully: the worker stops claiming and receiving, lets the
handlers in progress finish and exits 0 (1 if that takes longer than --stop-timeout);
events received but not yet handled are delivered again later. A second signal exits at
once with 130, without draining: events in flight were not recorded and will be
delivered again.

A refused password, an unknown database or a missing table or topic is fatal: one ERROR
line and exit 1 within seconds. A passing outage is retried with backoff and logged.
"""

#: Seconds ``worker`` waits for in-flight work after the first signal, by default.
DEFAULT_STOP_TIMEOUT = 30.0
#: Exit code when the second signal forces the worker down.
EXIT_FORCED = 130
#: How often the worker's main thread looks for a fatal error between signals.
WORKER_POLL_SECONDS = 0.2


def load_engine(spec: str) -> Engine:
    """Import ``module:attribute``: an Engine or a no-argument factory of one (see
    :mod:`outboxkit.cli.app_loading` for what else is recognised and refused)."""
    return _load_engine(spec)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.scenario == "orchestrator":
        from outboxkit.cli.demo_orchestrator import run_orchestrator_demo

        flows = run_orchestrator_demo(
            database_url=args.database_url,
            capability_database_url=args.capability_database_url,
            broker_url=args.broker_url,
            commands=args.commands,
            timeout=args.timeout,
            keep=args.keep,
        )
        return 0 if flows.ok else 1
    from outboxkit.cli.demo import run_demo

    summary = run_demo(
        database_url=args.database_url,
        broker_url=args.broker_url,
        orders=args.orders,
        timeout=args.timeout,
        keep=args.keep,
    )
    return 0 if summary.ok else 1


def _cmd_worker(args: argparse.Namespace) -> int:
    """Run the engine until a signal or a fatal error; exit 0 only after a clean drain.

    Exit codes: 0 stopped on a signal with every thread finished in time; 1 a fatal error
    (refused password, unknown database, missing table or topic: one ERROR log line) or a
    stop that did not finish within ``--stop-timeout``; 130 forced by a second signal.
    """
    engine = load_engine(args.app)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            logger.warning(
                "second signal %s: exiting now without draining; events in flight were not "
                "recorded and will be delivered again",
                name,
            )
            os._exit(EXIT_FORCED)
        logger.info(
            "signal %s: stopping gracefully (up to %g s; a second signal exits at once)",
            name,
            args.stop_timeout,
        )
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # a usage error (exit 2) if it cannot
    metrics = _serve_metrics(engine, args.metrics_port, args.metrics_host)
    try:
        return _run_worker(engine, args, stop_requested)
    finally:
        if metrics is not None:
            metrics.close()


def _run_worker(engine: Engine, args: argparse.Namespace, stop_requested: threading.Event) -> int:
    """Start, wait for a signal or a fatal error, stop; the exit code of ``_cmd_worker``."""
    try:
        if args.migrate:
            engine.create_schema()
        engine.start()
    except OutboxError as exc:
        print(f"outboxkit worker: cannot start {args.app}: {exc}", file=sys.stderr, flush=True)
        engine.stop(timeout=args.stop_timeout)
        return EXIT_FAILURE
    print(f"outboxkit worker running {args.app} (pid {os.getpid()})", flush=True)
    while not stop_requested.wait(WORKER_POLL_SECONDS) and engine.fatal_error is None:
        pass
    finished = engine.stop(timeout=args.stop_timeout)
    if engine.fatal_error is not None:
        return EXIT_FAILURE  # the engine logged it, as one ERROR line
    if not finished:
        print(
            f"outboxkit worker: could not drain within {args.stop_timeout:g} s",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _serve_metrics(engine: Engine, port: int | None, host: str) -> MetricsServer | None:
    """``--metrics-port`` (and ``--metrics-host``): serve /metrics, /livez and /readyz (needs
    the ``prometheus`` extra)."""
    if port is None:
        return None
    try:
        from outboxkit.observability.prometheus import worker_metrics
    except ImportError as exc:
        raise ConfigurationError(
            f"--metrics-port needs prometheus_client: pip install 'outboxkit[prometheus]' ({exc})"
        ) from exc
    try:
        return worker_metrics(engine, port, host=host)
    except OSError as exc:  # a port taken, an address this host does not have
        raise ConfigurationError(f"cannot serve metrics on {host} port {port}: {exc}") from exc


def _cmd_migrate(args: argparse.Namespace) -> int:
    engine = load_engine(args.app)
    services = args.service or None
    if args.print_sql:
        names = services or [s for s in engine.routing.services() if s not in engine.inboxes]
        routes = [engine.routing.route_of_service(s) for s in names]
        # By default what this database needs (ALTER TABLE for a Go table); --offline
        # prints the full CREATE DDL without connecting.
        repository = engine.repository
        ddl = repository.schema_ddl if args.offline else repository.schema_upgrade_ddl
        print(ddl(routes))
        for inbox in {id(i): i for i in engine.inboxes.values()}.values():
            print(inbox.schema_ddl())
        return 0
    routes = engine.create_schema(services)
    for route in routes:
        print(f"ready: {route.table} (service {route.service})")
    for service, inbox in sorted(engine.inboxes.items()):
        print(f"ready: {inbox.table_name} (inbox of service {service})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outboxkit",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[logging_options()],
    )
    parser.add_argument("--version", action="version", version=f"outboxkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = [logging_options()]

    demo = sub.add_parser(
        "demo",
        parents=common,
        help="publish, relay and consume events for two services",
        description="Write orders with their events for two services, relay and consume them "
        "(with retries, a dead event and rolled-back transactions) and print a summary. "
        "Needs no services by default (SQLite and an in-process broker); give "
        "--database-url and --broker-url to use real ones.",
    )
    demo.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in a temp dir)")
    demo.add_argument(
        "--broker-url",
        default="memory://",
        help="memory:// (default), redis://host:port/db, kafka://host:port or confluent://host:port",
    )
    demo.add_argument("--orders", type=int, default=200, help="orders to write (default 200)")
    demo.add_argument("--timeout", type=float, default=120.0, help="give up after seconds")
    demo.add_argument("--keep", action="store_true", help="keep the demo tables")
    demo.add_argument(
        "--scenario",
        choices=("orders", "orchestrator"),
        default="orders",
        help="orders (default): two services, one database; orchestrator: a command flow "
        "across two services and databases, through an inbox (docs/inbox.md)",
    )
    demo.add_argument(
        "--capability-database-url",
        help="orchestrator scenario: the writer service's own database (default: a second "
        "SQLite file, or --database-url when given)",
    )
    demo.add_argument(
        "--commands", type=int, default=3, help="orchestrator scenario: commands (default 3)"
    )
    demo.set_defaults(func=_cmd_demo)

    worker = sub.add_parser(
        "worker",
        parents=common,
        help="run an application's engine until SIGTERM/SIGINT",
        description=WORKER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("app", help="module:attribute of an Engine (or a factory of one)")
    worker.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT,
        metavar="SECONDS",
        help="after the first signal, how long in-flight handlers may take to finish before "
        f"the worker gives up and exits 1 (default {DEFAULT_STOP_TIMEOUT:g})",
    )
    worker.add_argument("--migrate", action="store_true", help="create the tables first")
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics, /livez and /readyz on this port (needs the prometheus extra)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the metrics port binds (default 127.0.0.1, this host only; 0.0.0.0 "
        "for every interface, e.g. for probes from outside a container)",
    )
    worker.set_defaults(func=_cmd_worker)

    migrate = sub.add_parser(
        "migrate",
        parents=common,
        help="create the outbox tables of an application",
        description="Create the outbox table of every service APP routes (and its inbox "
        "tables), or upgrade an existing one such as a Go table. Safe to run again.",
    )
    migrate.add_argument("app", help="module:attribute of an Engine (or a factory of one)")
    migrate.add_argument("--service", action="append", help="only this service (repeatable)")
    migrate.add_argument(
        "--print-sql",
        action="store_true",
        help="print the DDL this database needs (CREATE, or ALTER TABLE for an existing "
        "table such as a Go one), change nothing",
    )
    migrate.add_argument(
        "--offline",
        action="store_true",
        help="with --print-sql: the full CREATE DDL, without connecting",
    )
    migrate.set_defaults(func=_cmd_migrate)

    status_command.add_parser(sub, common)
    dlq_command.add_parser(sub, common)
    rows_command.add_parser(sub, common)
    purge_command.add_parser(sub, common)
    add_health_command(sub, load_engine)
    add_logging_arguments(sub.choices["health"])
    dev_kafka_command.add_parser(sub, common)
    return parser


#: Default log level per command: ``worker`` and ``migrate`` log their lifecycle at INFO;
#: the others print their result, so lifecycle lines (a repository opening, an engine
#: stopping) would only hide it. ``--log-level`` overrides.
_LOUD_COMMANDS = {"worker": "info", "migrate": "info", "demo": "error"}
#: The level of every command not in :data:`_LOUD_COMMANDS`.
_QUIET_LEVEL = "warning"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Positional words (APP, ids) after options, e.g. ``dlq requeue --service orders 7``.
    words = getattr(args, "extra_words", None)
    if extra and words and not any(e.startswith("-") for e in extra):
        getattr(args, words).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = getattr(args, "log_level", None) or _LOUD_COMMANDS.get(args.command, _QUIET_LEVEL)
    configure_logging(level, getattr(args, "client_log_level", None))
    try:
        return int(args.func(args))
    except (UsageError, ConfigurationError) as exc:
        print(f"outboxkit: error: {shown(exc, newlines=True)}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandFailedError, OutboxError) as exc:
        print(f"outboxkit: error: {shown(exc, newlines=True)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("outboxkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (``| head``): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
