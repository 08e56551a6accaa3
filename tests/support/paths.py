"""Where things are, for tests that run commands or read files of the checkout."""

from __future__ import annotations

from pathlib import Path

#: The root of the checkout (where README.md and outboxkit/ are).
ROOT = Path(__file__).resolve().parents[2]
