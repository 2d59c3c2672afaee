"""The entry-point module: what ``[project.entry-points.disentbench]`` points at.

disentbench imports this module and calls every ``@disentbench.hookimpl``
function in it whose name matches a hook. Each calls ``register`` once per
plugin it adds; a class that names itself (``name``, ``description``,
``config_class``) registers in one line. Names must be new: taking a
built-in's name (``beta_vae``) is reported as a problem and the built-in is
kept. This package implements every hook there is, one plugin each.
"""

from __future__ import annotations

from disentbench import hookimpl
from disentbench_plugin_example.bars import Bars
from disentbench_plugin_example.code_std import CodeStd
from disentbench_plugin_example.mlp_vae import MLPVAE
from disentbench_plugin_example.nearest_centroid import NearestCentroid
from disentbench_plugin_example.score_spread import ScoreSpread
from disentbench_plugin_example.shuffled import Shuffled


@hookimpl
def register_models(register):
    register(MLPVAE)


@hookimpl
def register_datasets(register):
    register(Bars)


@hookimpl
def register_metrics(register):
    register(CodeStd)


@hookimpl
def register_tasks(register):
    register(NearestCentroid)


@hookimpl
def register_executors(register):
    register(Shuffled)


@hookimpl
def register_analyses(register):
    register(ScoreSpread)
