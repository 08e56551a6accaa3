"""Reading durations (``90s``, ``15m``, ``2h``, ``7d``) and moments (a duration ago, or an
ISO 8601 timestamp in UTC) from the command line."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone

#: A number with an optional unit; checked with ``fullmatch``.
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest duration taken: 100 years. Anything longer is a typo, and would overflow
#: the date arithmetic (``--since 99999999999d`` crashed).
MAX_DURATION = 100 * 365 * 86400


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit s, m, h, d or w (``36h``, ``7d``),
    at most :data:`MAX_DURATION`."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 90s, 2h, 7d)"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if not seconds <= MAX_DURATION:  # also an infinity: "9" * 400
        raise argparse.ArgumentTypeError(
            f"invalid duration {text.strip()[:40]!r}: at most {MAX_DURATION // 86400}d (100 years)"
        )
    return seconds


def parse_moment(text: str) -> datetime | float:
    """A moment: a duration ago (returned as seconds, resolved later by the database clock)
    or an ISO 8601 timestamp (a naive one is UTC; returned as naive UTC)."""
    if _DURATION_RE.fullmatch(text):
        return parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if moment.tzinfo is not None:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"invalid time {text[:40]!r}: use a duration ago (2h, 7d) or an ISO timestamp "
            "(2026-11-25T10:00:00Z)"
        ) from None
    return moment


def resolve_moment(value: datetime | float | None, now: datetime) -> datetime | None:
    """A :func:`parse_moment` value as naive UTC, durations counted back from ``now``."""
    if value is None or isinstance(value, datetime):
        return value
    return now - timedelta(seconds=value)
