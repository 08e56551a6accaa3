"""The claim itself: rows it locks, concurrent claimers, and its cost as the table grows.

Everything goes through ``SqlRepository.claim_due``. To look inside its transaction while
it is open, a SQLAlchemy ``after_cursor_execute`` listener fires right after the claim's
locking statement (the one with ``SKIP LOCKED``): it reads ``information_schema.INNODB_TRX``
for that connection from another connection, or holds the transaction open while a second
claimer runs. The listener only acts in the benchmark's own named threads.

On PostgreSQL the claim is one ``UPDATE ... RETURNING`` run in autocommit, whose locks end
with the statement; there claimer A is :class:`HeldClaims`, the library's repository with
that one statement run in a transaction (as the library itself runs it on a database
without autocommit claims), so the listener can hold its locks open.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from benchmarks import raw
from benchmarks.common import Scratch, progress, scratch
from benchmarks.env import Env
from benchmarks.figures import Figure, IncompleteWorkError, cost, relative
from benchmarks.relay import floor_index
from outboxkit.backends import SqlRepository

LIMIT = 200
BACKLOG = 4_800
#: Rows locked by our claim may exceed the raw floor's by this factor at most.
LOCK_TARGET = 1.1
#: Claim cost on the large table over the 10k-row table (kept near 1.0 today).
SCALING_TARGET = 1.1
SCALING_CLAIMS = 50
SCALING_LIMIT = 100
#: Pending, due rows in both tables of the scaling figure (all of the 10k table's 1% open).
SCALING_DUE = 100
HOLD_SECONDS = 15.0
#: A second claimer taking this long waited for the first one's locks instead of skipping.
BLOCKED_SECONDS = 2.0
#: Longer than InnoDB's 0.1 s refresh interval of the INNODB_TRX cache.
INNODB_TRX_REFRESH = 0.25


@contextlib.contextmanager
def after_claim_select(
    db: sa.Engine,
    thread_name: str,
    hook: Callable[[Any], None],
    *,
    seen: list[str] | None = None,
) -> Iterator[None]:
    """Call ``hook(connection)`` right after a claim's locking statement (the one with
    ``SKIP LOCKED``) in ``thread_name``; append the statement to ``seen`` if given.

    Listens on every engine (filtered by thread): the repository runs its own transactions
    on pools of its own, not on ``db``.
    """

    def listener(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.current_thread().name == thread_name and "SKIP LOCKED" in statement.upper():
            if seen is not None:
                seen.append(statement.strip())
            hook(conn)

    del db  # kept in the signature: the thread name already picks the claim
    sa.event.listen(sa.Engine, "after_cursor_execute", listener)
    try:
        yield
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", listener)


def rows_locked(probe: sa.Engine, conn: Any) -> tuple[int, str]:
    """``trx_rows_locked`` and isolation level of the transaction open on ``conn`` (MariaDB).

    InnoDB refreshes the ``INNODB_TRX`` table from a cache at most every 0.1 s, so the
    claim's transaction is held open for longer than that before it is read (a read taken
    sooner can show an earlier transaction of the same connection id).
    """
    time.sleep(INNODB_TRX_REFRESH)
    thread_id = conn.connection.dbapi_connection.thread_id()
    with probe.connect() as other:
        found = other.execute(
            sa.text(
                "SELECT trx_rows_locked, trx_isolation_level FROM information_schema.INNODB_TRX "
                "WHERE trx_mysql_thread_id = :t"
            ),
            {"t": thread_id},
        ).first()
    if found is None:
        # Not "0 rows locked": the claim's transaction was not seen at all.
        raise IncompleteWorkError(
            f"INNODB_TRX showed no transaction for the claim's connection {thread_id}"
        )
    return int(found[0]), str(found[1])


def fresh_engine(env: Env, label: str, **options: Any) -> sa.Engine:
    """An engine of its own: no pooled connection shared with the other side."""
    return sa.create_engine(env.db_url(label), poolclass=NullPool, **options)


def _in_threads(*targets: tuple[str, Callable[[], None]]) -> None:
    """Run each ``(name, target)`` in a thread of that name, together; raise what one
    raised, or :class:`IncompleteWorkError` if one did not end in time."""
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,), name=n) for n, t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HOLD_SECONDS * 2)
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        raise IncompleteWorkError(f"threads {stuck} did not end within {HOLD_SECONDS * 2:g} s")
    if errors:
        raise errors[0]


def claim_locks(env: Env, label: str) -> list[Figure]:
    """Rows locked by a claim of 200 with 4,800 due rows, ours vs the raw floor's query."""
    probe, ours_db = fresh_engine(env, label), fresh_engine(env, label)
    # The raw claim runs at the isolation level the library uses for its own transactions.
    raw_db = fresh_engine(env, label, isolation_level="READ COMMITTED")
    seen: dict[str, tuple[int, str]] = {}
    try:
        with scratch(ours_db, "locks") as ours, scratch(raw_db, "locksraw") as bare:
            ours.fill(BACKLOG)
            floor_index(raw_db, label, bare.table)
            bare.fill(BACKLOG)

            def record(key: str) -> Callable[[Any], None]:
                return lambda conn: seen.setdefault(key, rows_locked(probe, conn))

            with after_claim_select(ours_db, "bench-claim-ours", record("ours")):
                _in_threads(
                    (
                        "bench-claim-ours",
                        lambda: ours.repository.claim_due(
                            ours.route, limit=LIMIT, lease_seconds=30
                        ),
                    )
                )
            with after_claim_select(raw_db, "bench-claim-raw", record("raw")):
                _in_threads(("bench-claim-raw", lambda: raw.claim_floor(raw_db, bare.table, LIMIT)))
    finally:
        for engine in (probe, ours_db, raw_db):
            engine.dispose()
    unseen = [side for side in ("ours", "raw") if side not in seen]
    if unseen:
        raise IncompleteWorkError(f"no locking claim statement was seen on the {unseen} side")
    (ours_rows, ours_level), (raw_rows, raw_level) = seen["ours"], seen["raw"]
    progress(f"{label} claim of {LIMIT} with {BACKLOG} due: locks {seen}")
    figures = [
        relative(
            f"{label} claim of {LIMIT} with {BACKLOG:,} due rows: rows locked",
            float(ours_rows),
            float(raw_rows),
            unit="rows",
            target=LOCK_TARGET,
            goal="ratio<=",
            note="INNODB_TRX.trx_rows_locked right after the claim's SELECT (index and clustered "
            f"records count separately); ours ran {ours_level}; raw = the same claim on an "
            f"index (status, next_retry_at), {raw_level}",
        )
    ]
    figures.append(concurrent_claims(env, label))
    return figures


class HeldClaims(SqlRepository):
    """The library's repository, its one-statement claims and marks run in a transaction
    instead of autocommit: ``SqlStore._statement`` does exactly that on a database without
    ``single_statement_autocommit``. The claim's code and SQL are the library's own; only
    the transaction around it lets a listener hold its locks open."""

    def _statement(self, what: str, route: Any, fn: Callable[[Any], Any]) -> Any:
        return self._transact(what, route, fn)


def concurrent_claims(env: Env, label: str) -> Figure:
    """Two claimers of 200 at once on 4,800 due rows: both should get a full batch.

    Claimer A (``claim_due``) is held right after its locking statement until claimer B
    (``claim_due``) has finished; on PostgreSQL A is :class:`HeldClaims`.
    """
    db = fresh_engine(env, label)
    sizes: dict[str, int] = {}
    statements: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.callback(db.dispose)
        ours = stack.enter_context(scratch(db, "conc"))
        ours.fill(BACKLOG)
        a_holds, b_done = threading.Event(), threading.Event()
        one_statement = ours.repository.dialect.single_statement_autocommit
        claimer = HeldClaims(db) if one_statement else ours.repository
        stack.callback(claimer.close)

        def hold(conn: Any) -> None:
            a_holds.set()
            b_done.wait(HOLD_SECONDS)

        def claimer_a() -> None:
            claim = claimer.claim_due(ours.route, limit=LIMIT, lease_seconds=30)
            sizes["a"] = len(claim.messages)

        def claimer_b() -> None:
            try:
                if not a_holds.wait(HOLD_SECONDS):
                    raise IncompleteWorkError(f"claimer A never held its locks in {HOLD_SECONDS} s")
                started = time.monotonic()
                claim = ours.repository.claim_due(ours.route, limit=LIMIT, lease_seconds=30)
                waited = time.monotonic() - started
                # A claim that waited for A's locks to go did not claim alongside it.
                sizes["b"] = len(claim.messages) if waited < BLOCKED_SECONDS else 0
                sizes["b_ms"] = round(waited * 1000)
            finally:
                b_done.set()

        with after_claim_select(db, "bench-claimer-a", hold, seen=statements):
            _in_threads(("bench-claimer-a", claimer_a), ("bench-claimer-b", claimer_b))
    first, second = sizes["a"], sizes["b"]
    how = statements[0].split(None, 1)[0].upper() if statements else "?"
    progress(f"{label} two concurrent claims of {LIMIT}: {first} and {second} rows")
    return relative(
        f"{label} two concurrent claims of {LIMIT} ({BACKLOG:,} due): smaller batch",
        float(min(first, second)),
        float(LIMIT),
        unit="rows",
        target=1.0,
        goal="ratio>=",
        note=f"batches {first} and {second}, both SqlRepository.claim_due (A held after its "
        f"locking {how}; B took {sizes['b_ms']} ms while A held its locks; a B that "
        f"waited {BLOCKED_SECONDS:g} s counts as 0); raw = the limit",
    )


def _bulk_fill(db: sa.Engine, label: str, table: str, count: int) -> None:
    """``count`` rows in one statement: 99% consumed, the other 1% published, except
    :data:`SCALING_DUE` of them (spread over the table) pending and due.

    Both tables hold the same number of due rows, so the figure isolates the table's size
    from the backlog's (a claim's cost may grow with the due rows it must consider: that
    is the "rows locked" figure's subject). PostgreSQL: ``generate_series``; MariaDB: its
    built-in ``seq_1_to_N`` sequence table.
    """
    columns = (
        "event_id, biz_type, service_name, topic, message_key, payload, status, retry_count, "
        "max_retry, next_retry_at, created_at, updated_at, consumed_at"
    )
    if label == "PG":
        now, source, n = "timezone('UTC', now())", f"generate_series(1, {int(count)}) AS s(g)", "g"
        key = "'k' || (g % 50)"
        event = "'e' || g"
    else:
        now, source, n = "UTC_TIMESTAMP(6)", f"seq_1_to_{int(count)}", "seq"
        key = "CONCAT('k', seq % 50)"
        event = "CONCAT('e', seq)"
    open_row = f"{n} % 100 = 0"
    due = f"{n} % {int(count // SCALING_DUE)} = 0"
    statement = (
        f"INSERT INTO {table} ({columns}) SELECT {event}, 'bench.event', 'bench', 't', {key}, "
        f":payload, CASE WHEN {due} THEN 'pending' WHEN {open_row} THEN 'published' "
        f"ELSE 'consumed' END, 0, 20, CASE WHEN {due} THEN {now} ELSE NULL END, {now}, {now}, "
        f"CASE WHEN {open_row} THEN NULL ELSE {now} END FROM {source}"
    )
    with db.begin() as conn:
        conn.execute(sa.text(statement), {"payload": raw.shell(0)})
    with db.begin() as conn:
        conn.execute(sa.text(f"ANALYZE TABLE {table}" if label != "PG" else f"ANALYZE {table}"))


def _claim_once(table: Scratch) -> float:
    """Seconds of one ``claim_due`` of 100; the batch is released (untimed) for the next."""
    before = time.perf_counter()
    claim = table.repository.claim_due(table.route, limit=SCALING_LIMIT, lease_seconds=30)
    elapsed = time.perf_counter() - before
    ids = [m.id for m in claim.messages]
    table.repository.release(table.route, ids, token=claim.token, delay=0)
    return elapsed


def _claim_costs(env: Env, label: str, small: int, large: int) -> tuple[float, float]:
    """Median seconds of a claim of 100 on the small and on the large table.

    Both tables exist at once and the claims alternate between them, so the machine's
    drift during the measurement falls on both sides alike.
    """
    db = env.db(label)
    with scratch(db, "scale") as small_table, scratch(db, "scalebig") as large_table:
        for table, count in ((small_table, small), (large_table, large)):
            started = time.monotonic()
            _bulk_fill(db, label, table.table, count)
            progress(f"filled {count:,} rows into {label} in {time.monotonic() - started:.0f} s")
        small_times, large_times = [], []
        for _ in range(SCALING_CLAIMS):
            small_times.append(_claim_once(small_table))
            large_times.append(_claim_once(large_table))
        return statistics.median(small_times), statistics.median(large_times)


def claim_scaling(env: Env, label: str, small: int, large: int) -> Figure:
    small_cost, large_cost = _claim_costs(env, label, small, large)
    progress(
        f"{label} claim of {SCALING_LIMIT}: {small_cost * 1000:.2f} ms at {small:,} rows, "
        f"{large_cost * 1000:.2f} ms at {large:,}"
    )
    note = (
        f"median of {SCALING_CLAIMS} claims of {SCALING_LIMIT}; {SCALING_DUE} due rows in "
        f"both tables, the rest of the 1% open rows published; raw = the {small:,}-row cost"
    )
    if large < 1_000_000:
        note += f"; --quick: the large table has {large:,} rows, not 1M"
    return cost(
        f"claim cost at {large:,} vs {small:,} rows (99% consumed), {label}",
        large_cost,
        small_cost,
        target=SCALING_TARGET,
        note=note,
    )
