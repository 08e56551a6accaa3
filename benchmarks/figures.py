"""The Figure record: one line of the benchmark's table and of its JSON output.

Every figure carries its own raw baseline and ratio, because on a shared, noisy machine
only a ratio to a building block measured in the same run means anything. Three kinds:

* throughput (higher is better): ``ratio = value / raw``, met when ``ratio >= target``;
* cost (lower is better): ``ratio = our time / raw time``, met when ``ratio <= target``;
* absolute (latency percentiles, lock counts): ``target`` bounds ``value`` itself, and
  ``raw``/``ratio`` are only filled where the issue names a raw reference.

A figure that could not be measured, or whose measurement did not do all its work (fewer
events handled than published, a raw baseline that stopped short), is a **failure**:
``failure`` says why and ``met`` is ``False``, never ``None`` as for a figure without a
target. ``python -m benchmarks.run`` exits non-zero when any figure failed. A figure that
ran in full and missed its target is not a failure: ``met`` is ``False``, the run exits 0.
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


class IncompleteWorkError(RuntimeError):
    """A measurement (ours or its raw baseline) did less work than it was given: its rate
    would not compare like with like, so the figure fails instead of being reported."""


def require_complete(done: int, expected: int, what: str) -> None:
    """Raise :class:`IncompleteWorkError` unless ``done`` reached ``expected``."""
    if done < expected:
        raise IncompleteWorkError(f"{what}: did {done} of {expected}")


@attrs.frozen(kw_only=True)
class Figure:
    """One measured figure; ``met`` is None when the issue sets no target for it, and False
    when ``failure`` says it could not be measured in full."""

    name: str
    unit: str
    value: float | None
    raw: float | None = None
    ratio: float | None = None
    target: float | None = None
    goal: Goal = "none"
    met: bool | None = None
    #: Free text shown under the table and kept in the JSON.
    note: str = ""
    #: Why the figure could not be measured in full; ``None`` when it was.
    failure: str | None = None

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
            "failure": self.failure,
        }


def _finite(number: float | None) -> float | None:
    if number is None or not math.isfinite(number):
        return None
    return round(number, 4)


def _met(goal: Goal, target: float | None, measured: float | None) -> bool | None:
    """Whether ``measured`` meets ``target``; ``None`` only for a figure without target. A
    figure with a target and nothing measured (no ratio: its raw side measured 0) fails."""
    if target is None or goal == "none":
        return None
    if measured is None or math.isnan(measured):
        return False
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


def failed(
    name: str, unit: str, reason: str, *, target: float | None = None, goal: Goal = "none"
) -> Figure:
    """A figure that could not be measured in full in this run: ``met`` is ``False``."""
    return Figure(
        name=name, unit=unit, value=None, target=target, goal=goal, met=False, failure=reason
    )


def failing(figure: Figure, reason: str) -> Figure:
    """``figure`` (its value kept, for what it is worth) marked as failed for ``reason``."""
    return attrs.evolve(figure, met=False, failure=reason)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sample; a sample of
    ``inf`` (an event never handled) counts as later than every other."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def failures(figures: Sequence[Figure]) -> list[Figure]:
    """The figures that failed: any of them makes the benchmark exit non-zero."""
    return [f for f in figures if f.failure is not None]


def write_json(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    """``{"figures": [...], "meta": {...}}``; ``meta`` says how and where the run was made."""
    document = {"figures": [f.as_json() for f in figures], "meta": meta}
    path.write_text(json.dumps(document, indent=2) + "\n")


def _cell(number: float | None, unit: str = "") -> str:
    if number is None:
        return "-"
    if math.isinf(number):
        return "never"
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
    if figure.failure is not None:
        return "FAILED"
    return {True: "yes", False: "NO", None: "-"}[figure.met]


def table(figures: Sequence[Figure]) -> str:
    """A Markdown table of every figure, then its notes (also valid as plain text)."""
    lines = [
        "| what | unit | outboxkit | raw, same run | ratio | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    notes = []
    for number, figure in enumerate(figures, 1):
        mark = f" [{number}]" if figure.note or figure.failure else ""
        lines.append(
            f"| {figure.name}{mark} | {figure.unit} | {_cell(figure.value)} | "
            f"{_cell(figure.raw)} | {_cell(figure.ratio, 'x')} | {_target(figure)} | "
            f"{_verdict(figure)} |"
        )
        if figure.failure is not None:
            notes.append(
                f"[{number}] FAILED: {figure.failure}" + (f"; {figure.note}" if figure.note else "")
            )
        elif figure.note:
            notes.append(f"[{number}] {figure.note}")
    return "\n".join(lines + (["", *notes] if notes else []))
