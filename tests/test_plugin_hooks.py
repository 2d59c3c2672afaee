"""Every plugin hook is documented and exercised: a hook added to the engine without both fails here.

The hookspecs are read from ``disentbench.core.hookspecs``; each must be
described in the README's "Writing a plugin" section and in
docs/architecture.md, have a plugin kind in the registry, and be implemented
by the example plugin package (whose tests, in test_plugin_example.py, build
and use a plugin of every kind).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from disentbench.core import hookspecs
from disentbench.core.registry import KINDS

REPO_ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    name
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(function, f"{hookspecs.PROJECT}_spec")
)


def _readme_section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_there_are_hooks_to_check():
    assert len(HOOKS) >= 6 and "register_analyses" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    assert f"`{hook}`" in _readme_section("Writing a plugin")
    assert f"`{hook}`" in (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_plugin_kind(hook):
    assert hook in KINDS.values()


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_implemented_by_the_example_plugin(hook):
    source = REPO_ROOT / "examples" / "plugin_example" / "disentbench_plugin_example" / "plugin.py"
    implemented = {
        node.name
        for node in ast.parse(source.read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d) in ("hookimpl", "disentbench.hookimpl") for d in node.decorator_list)
    }
    assert hook in implemented


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_typed(hook):
    """Hook signatures carry the Register protocol, so a plugin author's type checker sees the contract."""
    signature = inspect.signature(getattr(hookspecs, hook))
    assert list(signature.parameters) == ["register"]
    assert signature.parameters["register"].annotation in ("Register", hookspecs.Register)
