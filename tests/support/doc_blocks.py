"""The fenced ``python`` code blocks of a Markdown file, for tests that run the docs.

Only blocks fenced with exactly ```` ```python ```` count; indented blocks and other
languages (shell commands) are left alone. A block whose first line is a comment naming a
file (``# myapp/models.py``) is a file to write, see :attr:`CodeBlock.path`. A ```` ```text ````
block right after a python block (at most one line of prose between them, such as
"prints") is what the program prints, see :attr:`CodeBlock.output`.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_OUTPUT = re.compile(r"\n*(?:[^`\n][^\n]*\n\n*)?```text[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_PATH_COMMENT = re.compile(r"^#\s*([\w./-]+\.py)\b")


@attrs.frozen(kw_only=True)
class CodeBlock:
    """One block: its text as pasted and the line of the file it starts on."""

    source: str
    line: int
    output: str | None = None

    @property
    def path(self) -> str | None:
        """The file a block is meant to be saved as, from a ``# path.py`` first line."""
        match = _PATH_COMMENT.match(self.source)
        return match.group(1) if match else None

    def __str__(self) -> str:
        return f"block at line {self.line}"


def python_blocks(markdown: Path) -> list[CodeBlock]:
    """Every ```` ```python ```` block of ``markdown``, in order."""
    text = markdown.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        output = _OUTPUT.match(text, match.end() + 1)
        blocks.append(
            CodeBlock(
                source=match.group(1),
                line=text.count("\n", 0, match.start()) + 2,
                output=output.group(1) if output else None,
            )
        )
    return blocks
