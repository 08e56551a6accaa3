"""Griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings cross-reference with Sphinx roles (``:class:`~outboxkit.errors.OutboxError```,
``:meth:`Repository.add```), which Markdown would print as they are. Each role becomes
inline code, linked to the object's section when the name resolves to an object of the
package (absolute, relative to the module like ``.config``, or a member of the enclosing
class or module). The links are *optional* autorefs: an object not rendered on any page
stays plain code instead of breaking ``mkdocs build --strict``.

Used by ``mkdocs.yml`` (``extensions`` of the python handler); not part of the package.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const):`([^`]+)`")
_TITLED = re.compile(r"^(.*?)\s*<([^>]+)>$")


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        paths: dict[str, str] = {}
        objects: list[griffe.Object] = []
        _collect(pkg, paths, objects)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, obj, paths)


def _collect(obj: griffe.Object, paths: dict[str, str], objects: list[griffe.Object]) -> None:
    """Every object of the package (``paths``: any path, alias or not, -> canonical path)."""
    objects.append(obj)
    paths[obj.path] = obj.path
    for member in obj.members.values():
        if isinstance(member, griffe.Alias):
            try:
                paths[member.path] = member.final_target.path
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
        elif isinstance(member, griffe.Object) and member.path not in paths:
            _collect(member, paths, objects)


def _rewrite(docstring: str, where: griffe.Object, paths: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        return _replace(match.group(1), where, paths)

    return _ROLE.sub(one, docstring)


def _replace(text: str, where: griffe.Object, paths: dict[str, str]) -> str:
    titled = _TITLED.match(text)
    title, target = (titled.group(1), titled.group(2)) if titled else (None, text)
    short = target.startswith("~")
    target = target.lstrip("~").rstrip("()")
    display = title or (target.rsplit(".", 1)[-1] if short else target.lstrip("."))
    code = f"<code>{html.escape(display)}</code>"
    resolved = _resolve(target, where, paths)
    if resolved is None:
        return code
    return f'<autoref identifier="{html.escape(resolved)}" optional>{code}</autoref>'


def _resolve(target: str, where: griffe.Object, paths: dict[str, str]) -> str | None:
    module = where if isinstance(where, griffe.Module) else where.module
    candidates: list[str] = []
    if target.startswith("."):
        base = module if module.is_package else module.parent
        level = len(target) - len(target.lstrip("."))
        for _ in range(level - 1):
            base = base.parent if base is not None and base.parent is not None else base
        if base is not None:
            candidates.append(f"{base.path}.{target.lstrip('.')}")
    else:
        candidates.append(target)
        scope: griffe.Object | None = where
        while scope is not None:  # the enclosing class, its module, the parent packages
            candidates.append(f"{scope.path}.{target}")
            scope = scope.parent
    for candidate in candidates:
        if candidate in paths:
            return paths[candidate]
    return None
