"""How long to wait before the next attempt of a failed event."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

#: First retry delay of the default policy, in seconds.
DEFAULT_BASE_DELAY = 1.0
#: Longest delay of the default policy, in seconds (the Go cap).
DEFAULT_MAX_DELAY = 100.0


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap: ``base * multiplier**(n-1)``, +-jitter.

    ``attempt`` is the retry number after the failure (1 after the first failure). The
    number of attempts in all, the first included, before an event goes ``dead`` is the
    row's ``max_retry`` (``PublisherConfig.max_retry``), not part of this policy, because it
    is frozen into each row when it is written (as in Go).
    ``jitter`` is the fraction of the delay drawn at random (0.2 means +-20%); it spreads
    retries of events that failed together so they do not return in a burst.
    """

    base_delay: float = attrs.field(default=DEFAULT_BASE_DELAY, validator=attrs.validators.ge(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    max_delay: float = attrs.field(default=DEFAULT_MAX_DELAY, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(
        default=0.2, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )
    schedule: Callable[[int], float] | None = attrs.field(default=None, eq=False)
    random: Callable[[], float] = attrs.field(default=random.random, eq=False, repr=False)

    @classmethod
    def go_quadratic(cls) -> RetryPolicy:
        """The Go system's schedule: n**2 seconds with n capped at 10 (1, 4, 9, ... 100 s)."""
        return cls(jitter=0.0, max_delay=100.0, schedule=lambda n: float(min(max(n, 1), 10) ** 2))

    @classmethod
    def fixed(cls, delay: float) -> RetryPolicy:
        """The same delay every time (handy in tests and for fast local retries)."""
        return cls(base_delay=delay, multiplier=1.0, max_delay=delay, jitter=0.0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        attempt = max(attempt, 1)
        if self.schedule is not None:
            raw = self.schedule(attempt)
        else:
            # Cap the exponent first so huge attempt numbers never overflow a float.
            exponent = min(attempt - 1, 64)
            raw = self.base_delay * self.multiplier**exponent
        raw = min(raw, self.max_delay)
        if self.jitter:
            raw *= 1 + self.jitter * (2 * self.random() - 1)
        return max(0.0, min(raw, self.max_delay))
