"""How commands print: tables (rich when installed, plain text otherwise), JSON, ages,
timestamps, and URLs with their passwords masked.

rich is optional (the ``cli`` extra). Without it, or with ``--plain``, tables are plain
text: a header row, then columns separated by two spaces, easy to ``grep`` and ``cut``.
``--json`` prints one JSON document instead, for scripts.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

#: Longest cell printed in a table; ``--json`` and ``dlq show`` give the whole text.
MAX_CELL = 60


def format_age(seconds: float | None) -> str:
    """``None`` -> ``-``; else a short human duration such as ``4s``, ``3m12s``, ``2h05m``."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_time(moment: datetime | None) -> str:
    """A naive UTC timestamp as ISO 8601 with ``Z``, to the second (``-`` when absent)."""
    if moment is None:
        return "-"
    return moment.replace(microsecond=0).isoformat() + "Z"


def iso(moment: datetime | None) -> str | None:
    """A naive UTC timestamp as full ISO 8601 with ``Z`` for JSON (``None`` stays null)."""
    return None if moment is None else moment.isoformat() + "Z"


def one_line(text: str | None, limit: int = MAX_CELL) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def print_json(document: Any, out: TextIO | None = None) -> None:
    json.dump(document, out or sys.stdout, indent=2, sort_keys=False, default=str)
    (out or sys.stdout).write("\n")


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    plain: bool,
    title: str | None = None,
    out: TextIO | None = None,
) -> None:
    """A table with a header row: rich's when available and not ``plain``, else plain text."""
    out = out or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    if not plain and rich_available():
        _print_rich(headers, cells, title, out)
        return
    if title:
        out.write(title + "\n")
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for line in [list(headers), *cells]:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
    out.flush()


def _print_rich(
    headers: Sequence[str], cells: list[list[str]], title: str | None, out: TextIO
) -> None:
    from rich.console import Console
    from rich.table import Table

    # Not a terminal (a pipe, a file): wide enough never to wrap, no colour codes.
    console = Console(file=out, width=None if out.isatty() else 240, highlight=False)
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)


#: A reST role such as :class:`~outboxkit.Engine` (group 1: the target, ``~`` dropped).
_REST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` text: plain text, for a terminal.

    Roles (``:class:`X```) become their target and literal quotes are dropped; a help text
    is read in a terminal, where markup is noise.
    """
    return _REST_ROLE.sub(r"\1", doc or "").replace("``", "")
