"""The Figure record: one line of the benchmark's table and of its JSON output.

Every figure carries its own raw baseline and ratio, because on a shared, noisy machine
only a ratio to a building block measured in the same run means anything. Three kinds:

* throughput (higher is better): ``ratio = value / raw``, met when ``ratio >= target``;
* cost (lower is better): ``ratio = our time / raw time``, met when ``ratio <= target``;
* absolute (latency percentiles, lock counts): ``target`` bounds ``value`` itself, and
  ``raw``/``ratio`` are only filled where the issue names a raw reference.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

#: How a figure's ``target`` is compared: the ratio or the value, at least or at most.
Goal = Literal["ratio>=", "ratio<=", "value<=", "value>=", "none"]


@attrs.frozen(kw_only=True)
class Figure:
    """One measured figure; ``met`` is None when the issue sets no target for it."""

    name: str
    unit: str
    value: float | None
    raw: float | None = None
    ratio: float | None = None
    target: float | None = None
    goal: Goal = "none"
    met: bool | None = None
    #: Free text shown under the table and kept in the JSON (e.g. what was skipped).
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        """The issue's JSON shape, plus ``goal`` (how target is compared) and ``note``."""
        return {
            "name": self.name,
            "unit": self.unit,
            "value": _finite(self.value),
            "raw": _finite(self.raw),
            "ratio": _finite(self.ratio),
            "target": self.target,
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


def _finite(number: float | None) -> float | None:
    if number is None or not math.isfinite(number):
        return None
    return round(number, 4)


def _met(goal: Goal, target: float | None, measured: float | None) -> bool | None:
    if target is None or measured is None or goal == "none":
        return None
    if goal.endswith(">="):
        return measured >= target
    return measured <= target


def throughput(
    name: str, value: float, raw: float, *, target: float | None, unit: str = "ev/s", note: str = ""
) -> Figure:
    """Higher is better; ``ratio = value / raw`` and the target is a minimum ratio."""
    ratio = value / raw if raw > 0 else None
    goal: Goal = "ratio>=" if target is not None else "none"
    return Figure(
        name=name,
        unit=unit,
        value=value,
        raw=raw,
        ratio=ratio,
        target=target,
        goal=goal,
        met=_met(goal, target, ratio),
        note=note,
    )


def cost(
    name: str, ours_seconds: float, raw_seconds: float, *, target: float, note: str = ""
) -> Figure:
    """Lower is better: ``ratio = our time / raw time`` for the same work, target a maximum.

    ``value`` and ``raw`` are the per-operation times in milliseconds.
    """
    ratio = ours_seconds / raw_seconds if raw_seconds > 0 else None
    return Figure(
        name=name,
        unit="ms/op",
        value=ours_seconds * 1000,
        raw=raw_seconds * 1000,
        ratio=ratio,
        target=target,
        goal="ratio<=",
        met=_met("ratio<=", target, ratio),
        note=note,
    )


def absolute(
    name: str,
    value: float | None,
    *,
    unit: str,
    target: float | None = None,
    goal: Goal = "value<=",
    raw: float | None = None,
    note: str = "",
) -> Figure:
    """A figure judged on its own value (latency, rows locked); ``raw`` is informative."""
    ratio = value / raw if value is not None and raw else None
    used: Goal = goal if target is not None else "none"
    return Figure(
        name=name,
        unit=unit,
        value=value,
        raw=raw,
        ratio=ratio,
        target=target,
        goal=used,
        met=_met(used, target, value),
        note=note,
    )


def relative(
    name: str, value: float, raw: float, *, unit: str, target: float, goal: Goal, note: str = ""
) -> Figure:
    """A figure judged on ``ratio = value / raw`` with an explicit goal (at least / at most)."""
    ratio = value / raw if raw else None
    return Figure(
        name=name,
        unit=unit,
        value=value,
        raw=raw,
        ratio=ratio,
        target=target,
        goal=goal,
        met=_met(goal, target, ratio),
        note=note,
    )


def skipped(
    name: str, unit: str, reason: str, *, target: float | None = None, goal: Goal = "none"
) -> Figure:
    """A figure that could not be measured in this run, with the reason in ``note``."""
    return Figure(
        name=name, unit=unit, value=None, target=target, goal=goal, note=f"skipped: {reason}"
    )


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sample."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def write_json(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    """``{"figures": [...], "meta": {...}}``; ``meta`` says how and where the run was made."""
    document = {"figures": [f.as_json() for f in figures], "meta": meta}
    path.write_text(json.dumps(document, indent=2) + "\n")


def _cell(number: float | None, unit: str = "") -> str:
    if number is None:
        return "-"
    if unit in ("x", "ratio"):
        return f"{number:.2f}"
    if abs(number) >= 100:
        return f"{number:,.0f}"
    return f"{number:.2f}" if abs(number) < 10 else f"{number:.1f}"


def _target(figure: Figure) -> str:
    if figure.target is None:
        return "-"
    sign = ">=" if figure.goal.endswith(">=") else "<="
    what = "x" if figure.goal.startswith("ratio") else f" {figure.unit}"
    return f"{sign} {figure.target:g}{what}"


def _verdict(figure: Figure) -> str:
    if figure.value is None:
        return "skip"
    return {True: "yes", False: "NO", None: "-"}[figure.met]


def table(figures: Sequence[Figure]) -> str:
    """A Markdown table of every figure, then its notes (also valid as plain text)."""
    lines = [
        "| what | unit | outboxkit | raw, same run | ratio | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    notes = []
    for number, figure in enumerate(figures, 1):
        mark = f" [{number}]" if figure.note else ""
        lines.append(
            f"| {figure.name}{mark} | {figure.unit} | {_cell(figure.value)} | "
            f"{_cell(figure.raw)} | {_cell(figure.ratio, 'x')} | {_target(figure)} | "
            f"{_verdict(figure)} |"
        )
        if figure.note:
            notes.append(f"[{number}] {figure.note}")
    return "\n".join(lines + (["", *notes] if notes else []))
