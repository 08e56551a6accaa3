"""Summarise a py-spy profile: the frames where a figure's time goes.

    py-spy record --format raw --threads --idle -o prof.txt -- \\
        .venv/bin/python -m benchmarks.run --quick --only "consumer PG + Redis"
    .venv/bin/python -m benchmarks.topframes prof.txt --within "Consumer.run_once"

``--format raw`` writes collapsed stacks (``frame;frame;... count``). Only samples whose
stack contains ``--within`` are counted, from that frame down, so setup (filling tables,
joining groups) does not dilute the figure's own time. With ``--idle`` py-spy also counts
time spent waiting on sockets, which is where round trips to the servers show. Prints the
top frames by inclusive and by self share.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

#: py-spy frames look like ``function (module/path.py:123)``; the line number is dropped.
_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    name = _LINE.sub(")", frame.strip())
    return name.replace(".venv/lib/python3.11/site-packages/", "")


def summarise(path: Path, within: str, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or within not in stack:
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        start = next((i for i, f in enumerate(frames) if within in f), 0)
        frames = frames[start:]  # the figure's own frame and what it calls
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return f"no samples contain {within!r}"
    lines = [f"{total} samples within {within!r}", "", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--within", default="", help="count only stacks containing this")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarise(args.profile, args.within, args.top))


if __name__ == "__main__":
    main()
