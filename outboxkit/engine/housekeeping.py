"""The engine's housekeeping thread: retention, run by one worker at a time.

Every worker process may run it; the database decides which one works. Each run first tries
the repository's housekeeping lock for its tables (PostgreSQL ``pg_try_advisory_lock``,
MySQL ``GET_LOCK``, always held on SQLite) without waiting, and a worker that does not get
it skips the run. So N workers never race N purges over the same rows, and a worker that
dies mid-run frees the lock with its session.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence

from outboxkit.admin.retention import PurgeResult, RetentionPolicy, apply_retention
from outboxkit.errors import OutboxError
from outboxkit.routing import Route
from outboxkit.store import AdminStore

logger = logging.getLogger(__name__)

#: Prefix of the lock's name (see :func:`lock_name`).
HOUSEKEEPING_LOCK = "outboxkit-housekeeping"


def lock_name(routes: Sequence[Route]) -> str:
    """The lock of housekeeping over these tables: workers serving the same tables share it,
    while applications with other tables on the same server do not wait for each other
    (MySQL's ``GET_LOCK`` names are server-wide, not per database)."""
    tables = ",".join(sorted(r.table for r in routes))
    return f"{HOUSEKEEPING_LOCK}-{hashlib.sha256(tables.encode()).hexdigest()[:16]}"


def housekeeping_step(
    repository: AdminStore,
    routes: Sequence[Route],
    policy: RetentionPolicy,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> list[PurgeResult] | None:
    """One retention run under the lock; ``None`` when another worker holds it."""
    with repository.housekeeping_lock(lock_name(routes)) as lock:
        if not lock:
            logger.debug("housekeeping skipped: another worker holds the lock")
            return None
        return apply_retention(repository, routes, policy, should_stop=should_stop)


def run_housekeeping(
    repository: AdminStore,
    routes: Sequence[Route],
    policy: RetentionPolicy,
    *,
    stopping: threading.Event,
) -> None:
    """Run :func:`housekeeping_step` now and every ``policy.interval`` seconds until stopped.

    A failure (database down) is logged once per run and retried at the next interval: no
    row depends on retention being on time.
    """
    logger.info(
        "housekeeping every %.0f s for %s (consumed kept %s s, dead kept %s s)",
        policy.interval,
        [r.service for r in routes],
        policy.consumed_after,
        policy.dead_after,
    )
    while not stopping.is_set():
        try:
            housekeeping_step(repository, routes, policy, should_stop=stopping.is_set)
        except OutboxError as exc:
            logger.warning("housekeeping failed, trying again in %.0f s: %s", policy.interval, exc)
        except Exception:
            logger.exception("housekeeping failed unexpectedly")
        stopping.wait(policy.interval)
