"""Hook specifications: one hook per plugin kind.

Every hook receives a ``register`` callback. A plugin module (built-in or
third-party) calls it once per plugin it provides::

    @hookimpl
    def register_models(register):
        register("beta_vae", config=BetaVAEConfig, factory=BetaVAE,
                 description="beta-VAE (Higgins et al. 2017): recon + beta * KL")

Built-in plugins go through exactly these hooks, so anything a built-in can do
a third-party package can do too.
"""

from __future__ import annotations

import pluggy

PROJECT = "disentbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register):
    """Register model plugins: ``register(name, config=, factory=, description=)``.

    ``factory(config, observation_shape) -> disentbench.core.contracts.Model``.
    """


@hookspec
def register_datasets(register):
    """Register dataset plugins.

    ``factory(config) -> disentbench.core.data.ground_truth.GroundTruthData``.
    """


@hookspec
def register_metrics(register):
    """Register disentanglement metric plugins.

    ``factory(config) -> callable(data, representation_function, random_state) -> dict``.
    """


@hookspec
def register_tasks(register):
    """Register downstream-task plugins (same call signature as metrics)."""


@hookspec
def register_executors(register):
    """Register executor plugins: ``factory(config) -> Executor`` (see core.executors)."""


@hookspec
def register_analyses(register):
    """Register study analyses: ``factory(config) -> Analysis`` (see core.analysis)."""
