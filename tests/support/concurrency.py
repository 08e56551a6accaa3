"""Threads in tests: joining that fails when a thread is stuck, overlap that proves two ran
at once, and deadlocks the database reported to this test's own connections."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import sqlalchemy as sa

#: Deadlock error codes: PostgreSQL's SQLSTATE, MariaDB/MySQL's error number.
_DEADLOCK_CODES = {"40P01", 1213}


def join_all(threads: Sequence[threading.Thread], timeout: float) -> None:
    """Join every thread within ``timeout`` seconds in all; fail naming those still alive."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {timeout:g} s: {stuck}"


@attrs.define
class Span:
    """When a piece of work started and ended (``time.monotonic``)."""

    started: float = 0.0
    ended: float = 0.0

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        self.started = time.monotonic()
        try:
            yield
        finally:
            self.ended = time.monotonic()


def overlapped(spans: Sequence[Span]) -> bool:
    """Whether all ``spans`` were running at one same moment."""
    return max(s.started for s in spans) < min(s.ended for s in spans)


def _is_deadlock(error: BaseException | None) -> bool:
    orig = getattr(error, "orig", error)
    code = getattr(orig, "pgcode", None)
    if code is None:
        args = getattr(orig, "args", ())
        code = args[0] if args else None
    return code in _DEADLOCK_CODES


@contextlib.contextmanager
def deadlocks_seen(in_threads: Callable[[str], bool]) -> Iterator[list[str]]:
    """Deadlocks the server reported, while the block runs, to statements run by threads
    whose name passes ``in_threads``: a list of ``"<thread>: <statement>"``.

    Counted where the driver raises (SQLAlchemy's ``handle_error``, before any retry by the
    library), so a deadlock the library retries quietly is seen, and nothing another test
    or process does on the same server is.
    """
    seen: list[str] = []

    def listener(context: Any) -> None:
        name = threading.current_thread().name
        if in_threads(name) and _is_deadlock(context.original_exception):
            seen.append(f"{name}: {' '.join(str(context.statement).split())[:120]}")

    sa.event.listen(sa.Engine, "handle_error", listener)
    try:
        yield seen
    finally:
        sa.event.remove(sa.Engine, "handle_error", listener)
