"""A one-worker daemon executor: how the relay and the consumer overlap I/O with work.

The relay claims its next batch and marks its last one on such threads while it publishes;
the consumer receives its next batch on one while it records the current one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class HelperThread:
    """A daemon thread running submitted calls in order (a one-worker executor).

    A daemon, unlike ``ThreadPoolExecutor``'s worker: a claim, mark or receive stuck on a
    server that never answers must not keep the process from exiting after ``Engine.stop``.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((lambda: fn(*args, **kwargs), future))
        return future

    def shutdown(self) -> None:
        """Run what was submitted, then end the thread (does not wait for it)."""
        self._calls.put(None)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
