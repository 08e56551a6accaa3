"""Health of an engine, for orchestrators: liveness and readiness with a reason per failure.

:func:`check_health` (also :meth:`outboxkit.Engine.health`) runs four checks and returns a
:class:`HealthReport`:

* ``threads`` (liveness): every relay/consumer thread this process started is alive. A
  dead thread is a wedged worker only a restart cures. In a process that did not start the
  engine (the ``outboxkit health`` command) there are no threads to judge and it passes.
* ``database`` (readiness): the outbox tables of the served services can be read.
* ``broker`` (readiness): the broker answers (:meth:`outboxkit.broker.Broker.ping`).
* ``backlog`` (readiness, only with ``max_backlog_age``): no served service has a pending
  row older than that many seconds.

An unreachable database or broker makes a worker *not ready* but still *live*: restarting it
would not bring the database back, and the engine resumes by itself when it returns.

A failed check says what is wrong in ``reason`` (``cannot read the outbox of service
billing: OperationalError``), words safe to show to whoever can reach a probe; the error's
own text, which can name a host, a user, a table or a URL, is in ``error`` only, for the
``outboxkit health`` command and the worker's log (the HTTP endpoint leaves it out:
:meth:`HealthReport.to_dict` with ``errors=False``).

The checks read an engine through :class:`HealthSource`, what any engine-like object must
offer, so this module never reaches into the engine's insides. The ``outboxkit health APP``
command (:mod:`outboxkit.cli.health`) prints the report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from outboxkit.broker import Broker
from outboxkit.messages import Status
from outboxkit.observability.logs import describe_error
from outboxkit.routing import Route
from outboxkit.store import AdminStore

#: The probe kinds a check can count for.
LIVENESS = "liveness"
READINESS = "readiness"

#: Seconds the database and broker checks may take together before they count as failed.
DEFAULT_TIMEOUT = 5.0


class HealthSource(Protocol):
    """What the checks read of an engine (:class:`~outboxkit.Engine` is one)."""

    @property
    def enabled(self) -> bool:
        """Whether the engine runs threads and a broker at all."""
        ...

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        ...

    @property
    def repository(self) -> AdminStore: ...

    @property
    def broker(self) -> Broker | None: ...

    def thread_states(self) -> dict[str, bool]:
        """Name -> alive, for every thread the engine started in this process."""
        ...

    def served_routes(self) -> list[Route]:
        """The routes this process relays or consumes, one per service, by service name."""
        ...


class Checkable(Protocol):
    """Anything that reports its health (:meth:`outboxkit.Engine.health`): what the HTTP
    endpoint serves on ``/livez`` and ``/readyz``."""

    def health(
        self,
        *,
        max_backlog_age: float | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        liveness_only: bool = False,
    ) -> HealthReport: ...


@attrs.frozen(kw_only=True)
class HealthCheck:
    """One check's verdict; ``reason`` says why it failed (or why it was not judged), with
    no connection details; ``error`` the words of the error behind it, if any."""

    name: str
    ok: bool
    #: :data:`LIVENESS` or :data:`READINESS`: which probe a failure fails.
    probe: str
    reason: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = attrs.field(factory=dict)
    #: The error's type and first line (passwords masked), which may name a host, a user
    #: or a table: for operators, never served over HTTP.
    error: str | None = None


@attrs.frozen(kw_only=True)
class HealthReport:
    """Every check of one health run, with the liveness and readiness verdicts."""

    checks: tuple[HealthCheck, ...]

    @property
    def live(self) -> bool:
        """Whether the process should keep running (no liveness check failed)."""
        return all(c.ok for c in self.checks if c.probe == LIVENESS)

    @property
    def ready(self) -> bool:
        """Whether the worker can do its work now (live, and every readiness check passed)."""
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[HealthCheck, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def passes(self, probe: str) -> bool:
        """The verdict for ``probe`` (:data:`LIVENESS` or :data:`READINESS`)."""
        return self.live if probe == LIVENESS else self.ready

    def to_dict(self, *, errors: bool = True) -> dict[str, Any]:
        """The report as JSON values; without ``errors``, what may be served to anyone who
        reaches the probe (no ``error`` texts)."""
        drop = () if errors else ("error",)
        return {
            "live": self.live,
            "ready": self.ready,
            "checks": [
                {k: v for k, v in attrs.asdict(c).items() if k not in drop} for c in self.checks
            ],
        }


def check_health(
    source: HealthSource,
    *,
    max_backlog_age: float | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    liveness_only: bool = False,
) -> HealthReport:
    """Run every check against ``source`` (see the module docstring). Never raises.

    ``liveness_only`` runs only the thread check: a liveness probe that queried a hung
    database would pile abandoned checks up, each holding a pooled connection.

    The database and broker checks run side by side and each fails with "no answer within
    ``timeout`` s" when it has not returned by then (``None``: wait as long as the drivers
    do), so a probe returns in bounded time even when a server accepts connections and never
    answers. An abandoned check goes on in a daemon thread until its driver gives up.
    """
    if liveness_only:
        return HealthReport(checks=(_timed("threads", LIVENESS, lambda: _check_threads(source)),))
    routes = source.served_routes()
    backlog: dict[str, float | None] = {}
    checks = [
        _timed("threads", LIVENESS, lambda: _check_threads(source)),
        *_bounded(
            [
                ("database", lambda: _check_database(source, routes, backlog)),
                ("broker", lambda: _check_broker(source)),
            ],
            timeout,
        ),
    ]
    if max_backlog_age is not None:
        database_ok = checks[1].ok
        ages = dict(backlog) if database_ok else {}
        checks.append(
            _timed("backlog", READINESS, lambda: _check_backlog(ages, max_backlog_age, database_ok))
        )
    return HealthReport(checks=tuple(checks))


# ---------------------------------------------------------------------- the checks

_Verdict = tuple[bool, str | None, dict[str, Any]]


class _CheckFailedError(Exception):
    """A check that failed on an error: ``what`` says what could not be done."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _timed(name: str, probe: str, check: Callable[[], _Verdict]) -> HealthCheck:
    started = time.monotonic()
    error: str | None = None
    try:
        ok, reason, details = check()
    except Exception as exc:  # a check must report, never raise
        cause = exc.__cause__ if isinstance(exc, _CheckFailedError) and exc.__cause__ else exc
        what = exc.what if isinstance(exc, _CheckFailedError) else f"the {name} check failed"
        ok, reason, details = False, f"{what}: {type(cause).__name__}", {}
        error = _describe(cause)
    return HealthCheck(
        name=name,
        ok=ok,
        probe=probe,
        reason=reason,
        seconds=round(time.monotonic() - started, 4),
        details=details,
        error=error,
    )


def _bounded(
    checks: list[tuple[str, Callable[[], _Verdict]]], timeout: float | None
) -> list[HealthCheck]:
    """Run readiness checks in parallel daemon threads, giving up on each after ``timeout``."""
    if timeout is None:
        return [_timed(name, READINESS, check) for name, check in checks]
    results: dict[str, HealthCheck] = {}

    def run(name: str, check: Callable[[], _Verdict]) -> None:
        results[name] = _timed(name, READINESS, check)

    threads = [
        threading.Thread(
            target=run, args=(name, check), name=f"outboxkit-health-{name}", daemon=True
        )
        for name, check in checks
    ]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = HealthCheck(name="", ok=False, probe=READINESS, reason=f"no answer within {timeout:g} s")
    return [
        results.get(name) or attrs.evolve(late, name=name, seconds=timeout) for name, _ in checks
    ]


def _check_threads(source: HealthSource) -> _Verdict:
    threads = source.thread_states()
    if not source.enabled:
        return True, "engine disabled: no threads", {}
    if not threads:
        return True, "engine not started in this process: no threads to check", {}
    if not source.running:
        return False, "engine stopped", {"threads": threads}
    dead = sorted(name for name, alive in threads.items() if not alive)
    if dead:
        return False, f"threads not alive: {', '.join(dead)}", {"threads": threads}
    return True, None, {"threads": len(threads)}


def _check_database(
    source: HealthSource, routes: list[Route], backlog: dict[str, float | None]
) -> _Verdict:
    if not routes:
        try:
            source.repository.now()  # one round trip: the database answers
        except Exception as exc:
            raise _CheckFailedError("the database does not answer") from exc
        return True, "no served services: only the connection was checked", {}
    pending: dict[str, int] = {}
    for route in routes:
        try:
            pending[route.service] = source.repository.count_by_status(route).get(Status.PENDING, 0)
            backlog[route.service] = source.repository.oldest_pending_age(route)
        except Exception as exc:  # the table's name stays out of the reason
            raise _CheckFailedError(f"cannot read the outbox of service {route.service}") from exc
    return True, None, {"pending": pending, "oldest_pending_age": dict(backlog)}


def _check_broker(source: HealthSource) -> _Verdict:
    if source.broker is None:
        return True, "engine disabled: no broker", {}
    try:
        source.broker.ping()
    except NotImplementedError:
        return True, f"{type(source.broker).__name__} cannot be checked: not judged", {}
    except Exception as exc:
        raise _CheckFailedError("the broker does not answer") from exc
    return True, None, {}


def _check_backlog(backlog: dict[str, float | None], max_age: float, database_ok: bool) -> _Verdict:
    if not database_ok:
        return False, "backlog unknown: the database check failed", {}
    late = {s: age for s, age in backlog.items() if age is not None and age > max_age}
    if late:
        worst = max(late, key=lambda s: late[s] or 0.0)
        return (
            False,
            f"oldest pending row of {worst} is {late[worst]:.1f} s old (limit {max_age:g} s)",
            {"late": late},
        )
    return True, None, {"max_backlog_age": max_age}


def _describe(exc: BaseException) -> str:
    """One line naming the error, scrubbed (no value, no password): driver messages can span
    lines and carry SQL."""
    text = describe_error(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
