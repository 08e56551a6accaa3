"""redis-py errors translated to the :mod:`outboxkit.errors` tree, at the boundary."""

from __future__ import annotations

from outboxkit.errors import BrokerUnavailableError

#: Error replies that say the server cannot work right now, not that the message is bad.
UNAVAILABLE_REPLIES = (
    "OOM",
    "LOADING",
    "BUSY",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
)


def unavailable(exc: Exception, what: str) -> BrokerUnavailableError:
    return BrokerUnavailableError(f"Redis unavailable while {what}: {exc}")


def is_unavailable_reply(text: str) -> bool:
    return text.startswith(UNAVAILABLE_REPLIES)
