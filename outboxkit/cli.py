"""The ``outboxkit`` command: ``demo``, ``worker``, ``migrate`` and ``dead`` (dead letters).

Signals belong here, not in the library: ``worker`` stops gracefully on the first SIGTERM or
SIGINT (in-flight handlers finish) and exits at once on the second.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from outboxkit.engine import Engine
from outboxkit.errors import ConfigurationError, OutboxError
from outboxkit.messages import Status

logger = logging.getLogger("outboxkit.cli")

#: Exit code when the second signal forces the worker down.
EXIT_FORCED = 130


def load_engine(spec: str) -> Engine:
    """Import ``module:attribute``; the attribute is an Engine or a callable returning one."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"expected module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Engine) and callable(obj):
        obj = obj()
    if not isinstance(obj, Engine):
        raise ConfigurationError(f"{spec} is not an outboxkit Engine (got {type(obj).__name__})")
    return obj


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.scenario == "orchestrator":
        from outboxkit.demo_orchestrator import run_orchestrator_demo

        flows = run_orchestrator_demo(
            database_url=args.database_url,
            capability_database_url=args.capability_database_url,
            broker_url=args.broker_url,
            commands=args.commands,
            timeout=args.timeout,
            keep=args.keep,
        )
        return 0 if flows.ok else 1
    from outboxkit.demo import run_demo

    summary = run_demo(
        database_url=args.database_url,
        broker_url=args.broker_url,
        orders=args.orders,
        timeout=args.timeout,
        keep=args.keep,
    )
    return 0 if summary.ok else 1


def _cmd_worker(args: argparse.Namespace) -> int:
    engine = load_engine(args.app)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop_requested.is_set():
            logger.warning("second signal %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        logger.info("signal %s: stopping gracefully", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.migrate:
        engine.create_schema()
    engine.start()
    print(f"outboxkit worker running {args.app} (pid {os.getpid()})", flush=True)
    while not stop_requested.wait(0.5):
        pass
    finished = engine.stop(timeout=args.stop_timeout)
    return 0 if finished else 1


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


def _cmd_dead(args: argparse.Namespace) -> int:
    engine = load_engine(args.app)
    route = engine.routing.route_of_service(args.service)
    if args.action == "count":
        counts = engine.repository.count_by_status(route)
        for status, n in counts.items():
            print(f"{status.value}\t{n}")
        return 0
    if args.action == "list":
        rows = engine.repository.list_by_status(
            route, Status.DEAD, limit=args.limit, after_id=args.after
        )
        for row in rows:
            error = (row.last_error or "").replace("\n", " ")
            print(
                f"{row.id}\t{row.event_id or ''}\t{row.event_type}\t{row.message_key}\t"
                f"retries={row.retry_count}\t{error}"
            )
        return 0
    ids = [int(i) for i in args.ids] if args.ids else None
    requeued = engine.repository.requeue_dead(route, ids)
    print(f"requeued {requeued} dead rows of {route.table}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outboxkit", description=__doc__)
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING, ERROR (default: INFO; ERROR for the demo)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="publish, relay and consume events for two services")
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

    worker = sub.add_parser("worker", help="run an application's engine until SIGTERM/SIGINT")
    worker.add_argument("app", help="module:attribute of an Engine (or a factory of one)")
    worker.add_argument("--stop-timeout", type=float, default=30.0)
    worker.add_argument("--migrate", action="store_true", help="create the tables first")
    worker.set_defaults(func=_cmd_worker)

    migrate = sub.add_parser("migrate", help="create the outbox tables of an application")
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

    dead = sub.add_parser("dead", help="count, list or requeue dead events of a service")
    dead.add_argument("app", help="module:attribute of an Engine (or a factory of one)")
    dead.add_argument("action", choices=["count", "list", "requeue"])
    dead.add_argument("--service", required=True)
    dead.add_argument("--limit", type=int, default=100, help="list: rows per page")
    dead.add_argument("--after", type=int, default=0, help="list: only ids above this")
    dead.add_argument("ids", nargs="*", help="outbox ids to requeue (default: all dead rows)")
    dead.set_defaults(func=_cmd_dead)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("ERROR" if args.command == "demo" else "INFO")
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except OutboxError as exc:
        print(f"outboxkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
