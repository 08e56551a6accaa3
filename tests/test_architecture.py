"""The shape of the package, checked from its source: no import circle, a short root, small
modules (see docs/architecture.md).

Imports are read with :mod:`ast`, every one of them: at module level, inside functions and
under ``if TYPE_CHECKING:``. A circle that never runs at import time is still a coupling
that makes neither file understandable alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "outboxkit"
#: Modules the root of the package may hold (``__init__``, ``__main__`` and the shared
#: values and contracts): more means a newcomer can no longer read the flow from ``ls``.
MAX_ROOT_MODULES = 8
#: Lines a module may have before it is split by concern.
MAX_MODULE_LINES = 450


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The package's modules that ``module`` imports, wherever the import stands."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _known(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield from _known(target, modules)
            for alias in node.names:  # `from package import submodule`
                if f"{target}.{alias.name}" in modules:
                    yield f"{target}.{alias.name}"


def _known(name: str, modules: dict[str, Path]) -> Iterator[str]:
    """``name`` when it is one of the package's modules. The packages on its way (importing
    ``a.b.c`` runs ``a/__init__`` first) are not counted: a package's ``__init__`` that
    re-exports its modules is not coupled to them in both directions."""
    if name in modules:
        yield name


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target in _imported(name, path, modules) if target != name}
        for name, path in modules.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_file_of_the_package_imports_itself_through_a_circle() -> None:
    found = circles(import_graph())
    assert found == [], "import circles (each a set of modules that import each other):\n" + (
        "\n".join(" <-> ".join(c) for c in found)
    )


def test_the_circle_check_sees_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    # Given three modules that import each other only lazily
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    # Then the check reports the circle, and not the module that only uses it
    assert circles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from outboxkit.errors import OutboxError\n"
    source += "if TYPE_CHECKING:\n    import outboxkit.messages\n"
    path = tmp_path / "mod.py"
    path.write_text(source)
    modules = _modules()
    assert set(_imported("outboxkit.x", path, modules)) == {
        "outboxkit.errors",
        "outboxkit.messages",
    }


#: The floors of docs/architecture.md: a module may import its own floor and those below.
#: Keys are a package or a module of the package, most specific first.
FLOORS = {
    "outboxkit.errors": 1,
    "outboxkit.messages": 1,
    "outboxkit.retry": 1,
    "outboxkit.helper_thread": 1,
    "outboxkit.routing": 2,
    "outboxkit.broker": 2,
    "outboxkit.store": 2,
    "outboxkit.wire": 2,
    "outboxkit.observability.health": 4,
    "outboxkit.observability.http": 4,
    "outboxkit.observability.prometheus": 4,
    "outboxkit.observability": 2,
    "outboxkit.publish": 3,
    "outboxkit.relay": 3,
    "outboxkit.consume": 3,
    "outboxkit.inbox": 3,
    "outboxkit.backends": 3,
    "outboxkit.brokers": 3,
    "outboxkit.admin": 3,
    "outboxkit.engine": 4,
    "outboxkit.cli": 5,
    "outboxkit.testing": 5,
    "outboxkit.__main__": 5,
}


def floor(module: str) -> int | None:
    """The floor of ``module``; ``None`` for the package's face (``outboxkit/__init__``),
    which imports from every floor and whose ``__version__`` any module may read."""
    for prefix, level in FLOORS.items():
        if module == prefix or module.startswith(prefix + "."):
            return level
    if module == "outboxkit":
        return None
    raise AssertionError(f"{module} has no floor in FLOORS: give it one")


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    upward = [
        f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if floor(module) is not None and floor(target) is not None and floor(target) > floor(module)  # type: ignore[operator]
    ]
    assert upward == [], "\n".join(upward)


def test_the_root_of_the_package_holds_few_modules() -> None:
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_is_too_long_to_read(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)}: {lines} lines"
