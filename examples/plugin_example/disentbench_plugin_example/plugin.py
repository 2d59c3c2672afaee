"""The entry-point module: what ``[project.entry-points.disentbench]`` points at.

disentbench imports this module and calls every ``@disentbench.hookimpl``
function in it whose name matches a hook (``register_models``,
``register_datasets``, ``register_metrics``, ``register_tasks``,
``register_executors``). Each one calls ``register`` once per plugin it adds.
Names must be new: taking a built-in's name (``beta_vae``) is reported as a
problem and the built-in is kept.
"""

from __future__ import annotations

import disentbench
from disentbench_plugin_example.code_std import CodeStd, CodeStdConfig
from disentbench_plugin_example.mlp_vae import MLPVAE, MLPVAEConfig


@disentbench.hookimpl
def register_models(register):
    register(
        "mlp_vae",
        config=MLPVAEConfig,
        factory=MLPVAE,
        description="Fully-connected Gaussian VAE (example plugin): reconstruction + beta * KL, any image size",
    )


@disentbench.hookimpl
def register_metrics(register):
    register(
        "code_std",
        config=CodeStdConfig,
        factory=CodeStd,
        description="Per-dimension standard deviation of the codes (example plugin): mean and min over dimensions",
    )
