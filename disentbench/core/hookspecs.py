"""Hook specifications: one hook per plugin kind, and the ``register`` callback each receives.

A plugin module (built-in or third-party) implements any of these hooks and
calls ``register`` once per plugin it provides. The one-line form takes a class
that names itself::

    class BetaVAE(GaussianVAE):
        name = "beta_vae"
        description = "beta-VAE (Higgins et al. 2017): reconstruction + beta * KL"
        config_class = BetaVAEConfig
        ...

    @hookimpl
    def register_models(register):
        register(BetaVAE)

``register(name, config=..., factory=..., description=...)`` spells the same
out, for factories that are functions. Built-in plugins go through exactly
these hooks, so anything a built-in can do a third-party package can do too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, overload

import pluggy
from pydantic import BaseModel

PROJECT = "disentbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback every ``register_*`` hook receives.

    ``register(cls)`` reads ``cls.name``, ``cls.config_class`` and
    ``cls.description`` and uses the class as the factory;
    ``register(name, config=, factory=, description=)`` gives them explicitly.
    A clash with an existing name, or a config that is not a pydantic model,
    is reported as a plugin problem and skips that one registration.
    """

    @overload
    def __call__(self, plugin: type, /, *, description: str | None = None) -> None: ...

    @overload
    def __call__(
        self,
        plugin: str,
        /,
        *,
        config: type[BaseModel],
        factory: Callable[..., Any],
        description: str | None = None,
    ) -> None: ...


@hookspec
def register_models(register: Register) -> None:
    """Register model plugins.

    ``factory(config, observation_shape) -> disentbench.Model`` (usually a
    ``disentbench.GaussianVAE`` subclass, whose class is its own factory).
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset plugins: ``factory(config) -> disentbench.GroundTruthData``."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register disentanglement metric plugins: ``factory(config) -> disentbench.Metric``.

    A metric is called as ``metric(data, representation_function, random_state) -> dict[str, float]``.
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Register downstream-task plugins: ``factory(config) -> disentbench.Task`` (called like a metric)."""


@hookspec
def register_executors(register: Register) -> None:
    """Register executor plugins: ``factory(config) -> disentbench.Executor`` (runs a study's jobs)."""


@hookspec
def register_analyses(register: Register) -> None:
    """Register study analyses: ``factory(config) -> disentbench.Analysis`` (a table in, an AnalysisResult out)."""
