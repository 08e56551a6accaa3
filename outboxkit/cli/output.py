"""How commands print: tables (rich when installed, plain text otherwise), JSON, ages,
timestamps, and URLs with their passwords masked.

Text read from a database or a broker (an error a receipt's sender wrote, a message key) is
printed with its terminal control characters escaped (:func:`shown`: ESC as ``\\x1b``), in
tables of both renderers and in plain lines, so a stored value cannot retitle the window,
clear the screen or colour what follows. JSON escapes them itself and stays valid.

rich is optional (the ``cli`` extra). Without it, or with ``--plain``, tables are plain
text: a header row, then columns separated by two spaces, easy to ``grep`` and ``cut``.
``--json`` prints one JSON document instead, for scripts.

On a terminal (or with ``COLUMNS`` set) a row listing is fitted to the width: ids stay on
one line, other columns are shortened or left out (:class:`Fit`). Into a pipe or a file
nothing is cut but the longest cells (:data:`MAX_CELL`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

import attrs

from outboxkit.observability.logs import mask_url, printable

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


def shown(value: object, *, newlines: bool = False) -> str:
    """``value`` as text for the terminal: control characters escaped, URL passwords
    masked; line breaks escaped too unless ``newlines``."""
    return printable(mask_url(str(value)), newlines=newlines)


def print_json(document: Any, out: TextIO | None = None) -> None:
    json.dump(document, out or sys.stdout, indent=2, sort_keys=False, default=str)
    (out or sys.stdout).write("\n")


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


@attrs.frozen(kw_only=True)
class Fit:
    """How a table gives way when the terminal is narrower than the table.

    Columns in ``shrink`` are shortened with an ellipsis, the first as far as allowed before
    the next; columns in ``drop`` are left out, in that order, rather than shrinking the
    others below a comfortable width (:data:`COMFORTABLE_WIDTH`, then at worst
    :data:`MIN_FIT_WIDTH`). Columns named in neither are never cut: ids that people copy
    (an event id wrapped over five lines cannot be copied) and timestamps, which mean
    nothing cut short.
    """

    shrink: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


#: Width a shrinking column keeps if leaving columns out allows it.
COMFORTABLE_WIDTH = 20
#: Narrowest a shrinking column gets when even the last drop is not enough otherwise.
MIN_FIT_WIDTH = 10
#: Spaces between the columns of a plain table.
PLAIN_GAP = 2


def table_width(out: TextIO) -> int | None:
    """Columns available to a table on ``out``: ``COLUMNS`` when set (as argparse and rich
    read it), else the terminal's width; ``None`` for a pipe or a file, whose lines a
    script should get whole."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):  # no file descriptor behind ``out`` (a StringIO)
        pass
    return None


def fit_columns(
    headers: Sequence[str],
    cells: Sequence[Sequence[str]],
    *,
    width: int,
    fit: Fit,
    overhead: Callable[[int], int],
) -> tuple[list[int], list[int]]:
    """Which columns to print and how wide, so the table is at most ``width`` columns.

    ``overhead(n)`` is what the renderer adds around ``n`` columns (gaps, borders). The
    fewest columns are left out that let the shrinking ones keep :data:`COMFORTABLE_WIDTH`;
    failing that, :data:`MIN_FIT_WIDTH`. Returns the indexes of the kept columns and their
    widths; when even the last drop leaves the table too wide, it is returned as narrow as
    ``fit`` allows (the terminal then wraps it).
    """
    natural = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]
    index = {header: i for i, header in enumerate(headers)}
    shrinking = [index[h] for h in fit.shrink if h in index]

    def narrowed(kept: list[int], floor: int) -> dict[int, int] | None:
        widths = {i: natural[i] for i in kept}
        excess = sum(widths.values()) + overhead(len(kept)) - width
        for i in shrinking:
            if excess > 0 and i in widths:
                cut = min(excess, widths[i] - min(natural[i], floor))
                widths[i] -= cut
                excess -= cut
        return widths if excess <= 0 else None

    kept = list(range(len(headers)))
    for floor in (COMFORTABLE_WIDTH, MIN_FIT_WIDTH):
        kept = list(range(len(headers)))
        drops = [index[h] for h in fit.drop if h in index]
        while (widths := narrowed(kept, floor)) is None and drops:
            kept.remove(drops.pop(0))
        if widths is not None:
            return kept, [widths[i] for i in kept]
    widths = {i: min(natural[i], MIN_FIT_WIDTH) if i in shrinking else natural[i] for i in kept}
    return kept, [widths[i] for i in kept]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "\u2026"


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    plain: bool,
    title: str | None = None,
    out: TextIO | None = None,
    fit: Fit | None = None,
) -> None:
    """A table with a header row: rich's when available and not ``plain``, else plain text.

    With ``fit``, a table wider than the terminal (or ``COLUMNS``) is narrowed as ``fit``
    says, and the columns left out are named on stderr; without it rich folds long cells
    and plain text never cuts.
    """
    out = out or sys.stdout
    headers = [shown(h) for h in headers]
    cells = [[shown(c) for c in row] for row in rows]
    title = None if title is None else shown(title)
    use_rich = not plain and rich_available()
    width = table_width(out)
    kept = list(range(len(headers)))
    widths: list[int] | None = None
    if fit is not None and width is not None:
        overhead = _rich_overhead if use_rich else _plain_overhead
        kept, widths = fit_columns(headers, cells, width=width, fit=fit, overhead=overhead)
        left_out = [h for i, h in enumerate(headers) if i not in kept]
        if left_out:
            print(
                f"(left out to fit {width} columns: {', '.join(left_out)}; "
                "a wider terminal or --json shows them)",
                file=sys.stderr,
            )
        headers = [_cut(headers[i], w) for i, w in zip(kept, widths, strict=True)]
        cells = [[_cut(row[i], w) for i, w in zip(kept, widths, strict=True)] for row in cells]
    if use_rich:
        _print_rich(headers, cells, title, out, width=width, widths=widths)
        return
    if title:
        out.write(title + "\n")
    plain_widths = [len(h) for h in headers]
    for row in cells:
        plain_widths = [max(w, len(c)) for w, c in zip(plain_widths, row, strict=True)]
    for line in [list(headers), *cells]:
        out.write(
            "  ".join(c.ljust(w) for c, w in zip(line, plain_widths, strict=True)).rstrip() + "\n"
        )
    out.flush()


def _plain_overhead(columns: int) -> int:
    return PLAIN_GAP * (columns - 1)


def _rich_overhead(columns: int) -> int:
    """rich's default table: a border at each edge and between columns, one space of
    padding on each side of every cell."""
    return 3 * columns + 1


def _print_rich(
    headers: Sequence[str],
    cells: list[list[str]],
    title: str | None,
    out: TextIO,
    *,
    width: int | None,
    widths: list[int] | None,
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Not a terminal (a pipe, a file) and no COLUMNS: wide enough never to wrap.
    console = Console(file=out, width=width or 240, highlight=False)
    table = Table(title=title, title_justify="left")
    for n, header in enumerate(headers):
        if widths is None:
            table.add_column(header, overflow="fold")
        else:  # already cut to fit: rich must neither fold nor shrink it again
            table.add_column(header, width=widths[n], no_wrap=True, overflow="ellipsis")
    for row in cells:
        # Text, not str: an error message such as "KeyError: [/x]" is not rich markup
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)


#: A reST role such as :class:`~outboxkit.Engine` (group 1: the target, ``~`` dropped).
_REST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` text: plain text, for a terminal.

    Roles (``:class:`X```) become their target and literal quotes are dropped; a help text
    is read in a terminal, where markup is noise.
    """
    return _REST_ROLE.sub(r"\1", doc or "").replace("``", "")
