"""The plugin manager: built-in plugins, then the ``disentbench`` entry-point group.

Built-in plugin modules are registered with pluggy exactly like third-party
ones (dogfooding); the registry is then filled by calling each ``register_*``
hook with a callback. A broken third-party plugin (import error, exception in
its hook, a bad or duplicate registration) is recorded as a :class:`PluginProblem`
and reported; it never takes the CLI down. A plugin counts as a whole: one bad
registration and none of its registrations are kept.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel

from disentbench.core import hookspecs

ENTRY_POINT_GROUP = "disentbench"
LOAD_PLUGINS_ENV = "DISENTBENCH_LOAD_PLUGINS"

#: Plugin kinds, in display order, and the hook that registers each.
KINDS = {
    "model": "register_models",
    "dataset": "register_datasets",
    "metric": "register_metrics",
    "task": "register_tasks",
    "executor": "register_executors",
    "analysis": "register_analyses",
}

#: Built-in plugin modules, loaded through the same hooks as third-party ones.
BUILTIN_MODULES = [
    "disentbench.plugins.models.beta_vae",
    "disentbench.plugins.models.annealed_vae",
    "disentbench.plugins.models.factor_vae",
    "disentbench.plugins.models.dip_vae",
    "disentbench.plugins.models.beta_tcvae",
    "disentbench.plugins.datasets.dsprites",
    "disentbench.plugins.datasets.dsprites_variants",
    "disentbench.plugins.datasets.smallnorb",
    "disentbench.plugins.datasets.cars3d",
    "disentbench.plugins.datasets.shapes3d",
    "disentbench.plugins.datasets.mpi3d",
    "disentbench.plugins.metrics.mig",
    "disentbench.plugins.metrics.factor_vae_score",
    "disentbench.plugins.metrics.beta_vae_score",
    "disentbench.plugins.metrics.dci",
    "disentbench.plugins.metrics.sap",
    "disentbench.plugins.metrics.modularity_explicitness",
    "disentbench.plugins.metrics.unsupervised",
    "disentbench.plugins.tasks.downstream",
    "disentbench.plugins.analyses.metric_agreement",
    "disentbench.plugins.analyses.seeds_vs_hyperparameters",
    "disentbench.plugins.analyses.mean_vs_sampled",
    "disentbench.plugins.analyses.unsupervised_selection",
    "disentbench.plugins.analyses.hyperparameter_transfer",
    "disentbench.plugins.analyses.downstream",
    "disentbench.plugins.executors.local",
    "disentbench.plugins.executors.cluster",
]

BUILTIN_SOURCE = "disentbench"


@dataclass(frozen=True)
class Registration:
    """One registered plugin: what it is called, its config schema and its factory."""

    kind: str
    name: str
    config: type[BaseModel]
    factory: Callable[..., Any]
    description: str
    source: str  # distribution name ("disentbench" for built-ins)

    def make_config(self, params: dict | None = None) -> BaseModel:
        return self.config.model_validate(params or {})


@dataclass
class PluginProblem:
    source: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.source!r}: {self.error}"


@dataclass
class PluginRegistry:
    """All registered plugins by kind and name, plus the problems met while loading."""

    pm: pluggy.PluginManager
    plugins: dict[str, dict[str, Registration]] = field(default_factory=lambda: {k: {} for k in KINDS})
    problems: list[PluginProblem] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Registration:
        if kind not in self.plugins:
            raise KeyError(f"unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}")
        try:
            return self.plugins[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.plugins[kind])) or "none"
            raise KeyError(f"unknown {kind} plugin {name!r}; known: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def all(self, kind: str | None = None) -> list[Registration]:
        kinds = [kind] if kind else list(KINDS)
        return [reg for k in kinds for _, reg in sorted(self.plugins[k].items())]


def _allowed_plugins() -> set[str] | None:
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _plugin_source(pm: pluggy.PluginManager, plugin: object, dists: dict[str, str]) -> str:
    name = _plugin_name(pm, plugin)
    if name in dists:
        return dists[name]
    return BUILTIN_SOURCE if name.startswith("disentbench.") else name


def _load_entry_points(pm: pluggy.PluginManager, problems: list[PluginProblem]) -> dict[str, str]:
    """Like ``pm.load_setuptools_entrypoints`` but one bad plugin cannot stop the rest.

    Returns the distribution name of each registered entry point, by plugin name.
    """
    dists: dict[str, str] = {}
    allowed = _allowed_plugins()
    installed: set[str] = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            installed.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                continue
            dist_name = dist.metadata["name"] or ep.name
            if pm.is_blocked(ep.name):
                continue
            if pm.get_plugin(ep.name) is not None:
                other = dists.get(ep.name, BUILTIN_SOURCE)
                if other != dist_name:
                    problems.append(
                        PluginProblem(dist_name, f"entry point name {ep.name!r} is already used by {other!r}; skipped")
                    )
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
                dists[ep.name] = dist_name
            except Exception as exc:  # a third-party failure must not crash us
                problems.append(
                    PluginProblem(dist_name, f"failed to load entry point {ep.name!r}: {type(exc).__name__}: {exc}")
                )
    unknown = sorted((allowed or set()) - installed)
    if unknown:  # a typo in the allow-list would otherwise load nothing, silently
        problems.append(
            PluginProblem(
                f"${LOAD_PLUGINS_ENV}",
                f"names {', '.join(unknown)}, which no installed package provides; "
                f"installed plugin entry points: {', '.join(sorted(installed)) or 'none'}",
            )
        )
    return dists


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return str(pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin)))


@dataclass
class _Staged:
    """One plugin's registrations, collected from all its hooks before any is kept."""

    name: str  # the plugin: entry point name, or module name
    source: str  # its distribution
    registrations: list[Registration] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def register_callback(self, kind: str) -> Callable[..., None]:
        def register(plugin=None, /, *, config=None, factory=None, description=None) -> None:
            # register(PluginClass): the class carries name, config_class and description;
            # register("name", config=..., factory=..., description=...): the same, spelled out.
            name: Any
            if isinstance(plugin, str):
                name = plugin
                if config is None or factory is None:
                    self.problems.append(f"{kind} plugin {name!r}: register(name, ...) needs config= and factory=")
                    return
            else:
                name = getattr(plugin, "name", None)
                config = config if config is not None else getattr(plugin, "config_class", None)
                factory = factory if factory is not None else plugin
                if description is None:
                    description = getattr(plugin, "description", "")
                if not isinstance(name, str) or not name or config is None:
                    self.problems.append(
                        f"{kind} plugin {plugin!r}: register(cls) needs the class to set `name` (a string) "
                        "and `config_class`; or call register(name, config=..., factory=...)"
                    )
                    return
            if not isinstance(config, type) or not issubclass(config, BaseModel):
                self.problems.append(f"{kind} plugin {name!r}: config must be a pydantic BaseModel subclass")
                return
            self.registrations.append(Registration(kind, name, config, factory, description or "", self.source))

        return register

    def commit(self, registry: PluginRegistry) -> None:
        """Keep every registration of this plugin, or none (one problem line naming plugin, package and why)."""
        problems = list(self.problems)
        mine: set[tuple[str, str]] = set()
        for reg in self.registrations:
            existing = registry.plugins[reg.kind].get(reg.name)
            if existing is not None:
                problems.append(
                    f"{reg.kind} plugin {reg.name!r} is already registered by {existing.source!r}; rename it"
                )
            elif (reg.kind, reg.name) in mine:
                problems.append(f"{reg.kind} plugin {reg.name!r} is registered twice by this plugin")
            mine.add((reg.kind, reg.name))
        if not problems:
            for reg in self.registrations:
                registry.plugins[reg.kind][reg.name] = reg
            return
        dropped = ", ".join(f"{r.kind} {r.name!r}" for r in self.registrations)
        skipped = f"plugin {self.name!r} of package {self.source!r} skipped entirely"
        registry.problems.append(
            PluginProblem(
                self.source, "; ".join(problems) + f"; {skipped}" + (f" (not registered: {dropped})" if dropped else "")
            )
        )


def build_registry(*, load_entry_points: bool = True, extra_plugins: Sequence[object] = ()) -> PluginRegistry:
    """Create a plugin manager, register built-ins and entry points, and fill the registry."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    problems: list[PluginProblem] = []
    dists: dict[str, str] = {}
    for module_name in BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        dists = _load_entry_points(pm, problems)
    for index, plugin in enumerate(extra_plugins):
        pm.register(plugin, name=getattr(plugin, "__name__", f"extra-plugin-{index}"))
    while True:  # report every plugin with a misspelled hook, not just the first
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            problems.append(PluginProblem(_plugin_source(pm, exc.plugin, dists), str(exc)))
            pm.unregister(exc.plugin)

    registry = PluginRegistry(pm=pm, problems=problems)
    # Each plugin's registrations are staged, then kept all together or not at all: a plugin that
    # registers a taken name, makes a bad register() call or raises in a hook is skipped entirely, so a
    # study never runs with half of a package (its model without the metric it ships for it).
    staged: dict[int, _Staged] = {}
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            staging = staged.setdefault(
                id(impl.plugin), _Staged(_plugin_name(pm, impl.plugin), _plugin_source(pm, impl.plugin, dists))
            )
            try:
                impl.function(register=staging.register_callback(kind))
            except Exception as exc:
                staging.problems.append(f"{hook_name}: {type(exc).__name__}: {exc}")
    # Built-ins first whatever hook options a plugin uses (tryfirst/trylast):
    # a third-party plugin can add names, never take over a built-in one.
    for staging in sorted(staged.values(), key=lambda p: p.source != BUILTIN_SOURCE):
        staging.commit(registry)
    return registry


_REGISTRY: PluginRegistry | None = None


def get_plugin_manager(*, reload: bool = False) -> PluginRegistry:
    """The process-wide registry (the only global state), built on first use.

    Entry points are skipped inside this project's own test runs unless a test
    asks for them (``sys._called_from_test``), so tests are hermetic.
    """
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = build_registry(load_entry_points=not getattr(sys, "_called_from_test", False))
    return _REGISTRY
