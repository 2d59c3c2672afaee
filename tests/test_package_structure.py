"""The package's shape: the engine never imports a plugin, plugins do not import each other, no import cycles.

These are read from the source (every import statement, including those
inside functions and ``TYPE_CHECKING`` blocks), not from what happens to be
imported at run time, so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "disentbench"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """Every disentbench module (or package) that ``module``'s source imports."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_engine_never_imports_a_plugin():
    """core/ is the engine: built-in plugins depend on it, never the reverse (the registry names them as strings)."""
    offenders = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith("disentbench.core")
        for target in sorted(targets)
        if target.startswith("disentbench.plugins")
    ]
    assert offenders == []


def test_plugins_do_not_import_other_plugin_packages():
    """Each built-in plugin package stands alone on the engine, as a third-party one would."""

    def family(module: str) -> str:
        return ".".join(module.split(".")[:3])

    offenders = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith("disentbench.plugins.")
        for target in sorted(targets)
        if target.startswith("disentbench.plugins.") and family(target) != family(module)
    ]
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycles_between_modules():
    """No two modules import each other, directly or round a loop: each room depends only on rooms below it."""
    assert _cycles(GRAPH) == []


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3]) if len(parts) > 2 else module


def test_no_import_cycles_between_subpackages():
    """The rooms of core/ and plugins/ form a layered graph, as docs/architecture.md draws it."""
    rooms: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        if module == "disentbench":
            continue  # the public facade re-exports from every room; nothing in the engine imports it
        rooms.setdefault(_room(module), set()).update(
            _room(t) for t in targets if _room(t) != _room(module) and t != "disentbench"
        )
    assert _cycles(rooms) == []


def test_the_cycle_finder_finds_cycles():
    """The checks above would fail on a loop (a test that could not fail would prove nothing)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_builtin_plugin_module_is_registered():
    """A module under plugins/ that implements a hook is in the registry's built-in list, and every entry exists."""
    from disentbench.core.registry import BUILTIN_MODULES

    with_hooks = {
        module
        for module, path in MODULES.items()
        if module.startswith("disentbench.plugins.") and "@hookimpl" in path.read_text(encoding="utf-8")
    }
    assert set(BUILTIN_MODULES) == with_hooks


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_is_for(module):
    """Each module opens with a docstring, so the tree reads as the architecture without other prose."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{module} has no module docstring"


def test_tests_share_code_only_through_helpers():
    """A test module imports shared code from tests/helpers.py, never from another test module or conftest."""
    offenders = []
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name} imports {n}" for n in names if n.startswith(("test_", "conftest"))]
    assert offenders == []
