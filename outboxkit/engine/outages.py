"""Logging an outage once per state change instead of once per retry.

A worker whose database or broker is down retries with backoff for as long as it takes.
Logging every retry (worse, with a traceback) buries everything else: an operations report
counted 863 lines in 5 s for one wrong password. :class:`OutageLog` logs a WARNING when an
outage begins (or its cause changes), a WARNING summary every ``summary_every`` seconds
while it lasts, and an INFO line when it ends; each retry in between is DEBUG.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

#: Seconds between two "still down" summaries of one outage.
SUMMARY_EVERY_SECONDS = 60.0


_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def one_line(exc: BaseException) -> str:
    """``exc``'s text on one line, without SQLAlchemy's "Background on this error" link.

    Driver messages span lines (psycopg2 adds "Is the server running on that host..."),
    which log pipelines split into unrelated records.
    """
    return " ".join(_BACKGROUND.sub("", str(exc)).split()) or type(exc).__name__


class OutageLog:
    """The outage state of one loop (one thread); not thread-safe, not shared."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        summary_every: float = SUMMARY_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._summary_every = summary_every
        self._clock = clock
        self._since: float | None = None
        self._failures = 0
        self._cause = ""
        self._next_summary = 0.0

    @property
    def down(self) -> bool:
        """Whether an outage is in progress."""
        return self._since is not None

    def failed(self, exc: BaseException, pause: float) -> None:
        """Record a failed attempt; ``pause`` is the backoff before the next one."""
        now = self._clock()
        cause = type(exc).__name__
        self._failures += 1
        if self._since is None or cause != self._cause:
            if self._since is None:
                self._since = now
                self._failures = 1
            self._cause = cause
            self._next_summary = now + self._summary_every
            self._logger.warning(
                "%s paused, retrying with backoff (logged again in %.0f s if still down): %s",
                self._what,
                self._summary_every,
                one_line(exc),
                extra={"outbox_outage": self._what},
            )
        elif now >= self._next_summary:
            self._next_summary = now + self._summary_every
            self._logger.warning(
                "%s still down after %.0f s (%d attempts): %s",
                self._what,
                now - self._since,
                self._failures,
                one_line(exc),
                extra={"outbox_outage": self._what},
            )
        else:
            self._logger.debug(
                "%s: attempt %d failed, next in %.1f s: %s", self._what, self._failures, pause, exc
            )

    def recovered(self) -> None:
        """Record a successful attempt; logs the end of an outage if one was in progress."""
        if self._since is None:
            return
        self._logger.info(
            "%s recovered after %.1f s (%d failed attempts)",
            self._what,
            self._clock() - self._since,
            self._failures,
            extra={"outbox_outage": self._what},
        )
        self._since = None
        self._failures = 0
        self._cause = ""
