"""Which database and which services a command works on.

Either an application (``module:attribute`` of an outboxkit Engine: its repository and its
routes) or ``--database-url`` with the routes named on the command line: ``--service NAME``
(repeatable; the table by the naming convention ``<service>_outbox_messages``) and, for one
service, ``--table T`` where the table has another name. With a URL and no service, every
table named ``*_outbox_messages`` is found by looking.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import sqlalchemy as sa

from outboxkit.admin.status import DEFAULT_REDELIVERY_AFTER
from outboxkit.cli.app_loading import load_engine
from outboxkit.cli.common import CommandFailedError, UsageError
from outboxkit.errors import ConfigurationError, InvalidNameError
from outboxkit.observability.logs import mask_url
from outboxkit.routing import Route
from outboxkit.store import Repository

if TYPE_CHECKING:
    from outboxkit.backends import SqlRepository

#: Suffix of the tables found when ``--database-url`` is given without ``--service``.
CONVENTION_SUFFIX = "_outbox_messages"


@attrs.define(kw_only=True)
class Target:
    """A repository and the routes a command acts on; :meth:`close` releases what it opened."""

    repository: Repository
    routes: list[Route]
    #: Where the rows come from, for messages: the APP or the URL with its password masked.
    source: str
    #: Seconds after which a published, unconsumed row counts as stuck.
    redelivery_after: float
    owns_repository: bool = False

    def close(self) -> None:
        if self.owns_repository:
            self.repository.close()

    def single_route(self) -> Route:
        """The one route of a command about one service (the dead-letter queue)."""
        if len(self.routes) != 1:
            names = ", ".join(r.service for r in self.routes)
            raise UsageError(f"name one service with --service (there are: {names})")
        return self.routes[0]


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--app``, ``--database-url``, ``--service`` and ``--table`` (APP may also come
    positionally; see :func:`split_positionals`)."""
    group = parser.add_argument_group("what to work on (APP or --database-url)")
    group.add_argument("--app", help="module:attribute of an outboxkit Engine (or a factory)")
    group.add_argument("--database-url", help="SQLAlchemy URL of the database, instead of an APP")
    group.add_argument(
        "--service",
        action="append",
        default=[],
        help="only this service (repeatable); with --database-url it names the table too",
    )
    group.add_argument(
        "--table", help="with --database-url and one --service: its table, if not by convention"
    )


def split_positionals(
    tokens: Sequence[str], *, max_ids: int | None
) -> tuple[str | None, list[int]]:
    """Positional words as ``(APP, ids)``: ``module:attribute`` is the APP, numbers are ids."""
    app: str | None = None
    ids: list[int] = []
    for token in tokens:
        if ":" in token:
            if app is not None:
                raise UsageError(f"two APPs given: {app!r} and {token!r}")
            app = token
        elif token.isdigit():
            ids.append(int(token))
        else:
            raise UsageError(f"expected APP (module:attribute) or an outbox id, got {token!r}")
    if max_ids is not None and len(ids) > max_ids:
        raise UsageError(f"expected at most {max_ids} id(s), got {len(ids)}")
    return app, ids


def open_target(args: argparse.Namespace, app: str | None) -> Target:
    """Resolve APP or ``--database-url`` plus routes, and check every table exists."""
    app = app or args.app
    if app and args.app and app != args.app:
        raise UsageError("give APP either positionally or with --app, not both")
    if app and args.database_url:
        raise UsageError("give either APP or --database-url, not both")
    if app:
        target = _from_app(app, args)
    elif args.database_url:
        target = _from_url(args.database_url, args)
    else:
        raise UsageError("say what to work on: APP (module:attribute) or --database-url URL")
    try:
        missing = [r.table for r in target.routes if not target.repository.has_table(r)]
        if missing:
            raise CommandFailedError(
                f"no table {', '.join(missing)} in {target.source} (wrong --service or --table, "
                "or the tables were never created: outboxkit migrate)"
            )
    except BaseException:
        target.close()
        raise
    return target


def _from_app(app: str, args: argparse.Namespace) -> Target:
    if args.table:
        raise UsageError("--table goes with --database-url; an APP knows its tables")
    engine = load_engine(app)
    known = engine.routing.services()
    for service in args.service:
        if service not in known:
            raise UsageError(
                f"unknown service {service!r}: {app} routes events to "
                f"{', '.join(known) or 'no service'}"
            )
    services = args.service or known
    redelivery = engine.config.relay.republish_after
    return Target(
        repository=engine.repository,
        routes=[engine.routing.route_of_service(s) for s in services],
        source=app,
        redelivery_after=DEFAULT_REDELIVERY_AFTER if redelivery is None else redelivery,
    )


def _from_url(url: str, args: argparse.Namespace) -> Target:
    from outboxkit.backends import SqlRepository

    if args.table and len(args.service) != 1:
        raise UsageError("--table needs exactly one --service")
    try:
        repository = SqlRepository.from_url(url)  # postgres:// too (outboxkit.backends.urls)
    except ConfigurationError as exc:  # unknown scheme, missing driver: password masked
        raise UsageError(f"bad --database-url: {exc}") from exc
    source = mask_url(url)
    try:
        if args.service:
            routes = [Route.by_convention(s) for s in args.service]
            if args.table:
                routes = [attrs.evolve(routes[0], table=args.table)]
        else:
            routes = _discover(repository, source)
    except BaseException:
        repository.close()
        raise
    return Target(
        repository=repository,
        routes=routes,
        source=source,
        redelivery_after=DEFAULT_REDELIVERY_AFTER,
        owns_repository=True,
    )


def _discover(repository: SqlRepository, source: str) -> list[Route]:
    from outboxkit.errors import RepositoryError

    try:
        names = sa.inspect(repository.engine).get_table_names()
    except sa.exc.SQLAlchemyError as exc:
        raise RepositoryError(f"listing the tables of {source} failed: {exc}") from exc
    routes = []
    for name in sorted(names):
        stem = name[: -len(CONVENTION_SUFFIX)]
        if not name.endswith(CONVENTION_SUFFIX) or not stem:
            continue
        try:
            route = Route.by_convention(stem.replace("_", "-"))
        except InvalidNameError:  # a table whose name makes no service name: not ours
            continue
        routes.append(attrs.evolve(route, table=name))
    if not routes:
        raise CommandFailedError(
            f"no outbox tables (*{CONVENTION_SUFFIX}) in {source}; name them with --service "
            "(and --table)"
        )
    return routes
