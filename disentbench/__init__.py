"""disentbench: large studies of disentangled representation learning in PyTorch.

The public API (everything a plugin or a script needs; the rest is internal)::

    # writing plugins
    from disentbench import hookimpl, Register, PluginConfig
    from disentbench import Model, ModelConfig, GaussianVAE, GaussianVAEConfig   # models
    from disentbench import GroundTruthData                                       # datasets
    from disentbench import Metric, Task                                          # metrics, tasks
    from disentbench import Executor, RunJob, RunOutcome                          # executors
    from disentbench import Analysis, AnalysisConfig, AnalysisResult, AnalysisSkipped, StudyTable  # analyses

    # using the engine from Python
    from disentbench import get_plugin_manager, load_study_config, expand_grid, run_study
    from disentbench import score_codes, score_representation
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from disentbench.core.hookspecs import Register, hookimpl
from disentbench.version import __version__

# Public name -> the module that defines it. Imported on first use, so that
# ``from disentbench import hookimpl`` in a plugin module does not pull in
# torch, mlflow and every built-in plugin.
_LAZY = {
    "PluginConfig": "disentbench.core.contracts",
    "ModelConfig": "disentbench.core.contracts",
    "Model": "disentbench.core.contracts",
    "Metric": "disentbench.core.contracts",
    "Task": "disentbench.core.contracts",
    "Scorer": "disentbench.core.contracts",
    "GaussianVAE": "disentbench.core.nets.vae",
    "GaussianVAEConfig": "disentbench.core.nets.vae",
    "GroundTruthData": "disentbench.core.data.ground_truth",
    "Executor": "disentbench.core.study.jobs",
    "RunJob": "disentbench.core.study.jobs",
    "RunOutcome": "disentbench.core.study.jobs",
    "Analysis": "disentbench.core.analysis.contract",
    "AnalysisConfig": "disentbench.core.analysis.contract",
    "AnalysisResult": "disentbench.core.analysis.contract",
    "AnalysisSkipped": "disentbench.core.analysis.contract",
    "StudyTable": "disentbench.core.analysis.table",
    "get_plugin_manager": "disentbench.core.registry",
    "load_study_config": "disentbench.core.config.load",
    "expand_grid": "disentbench.core.config.grid",
    "run_study": "disentbench.core.study.run",
    "score_codes": "disentbench.core.evaluation.api",
    "score_representation": "disentbench.core.evaluation.api",
}

__all__ = ["__version__", "hookimpl", "Register", *_LAZY]

if TYPE_CHECKING:  # type checkers and IDEs see the real objects
    from disentbench.core.analysis.contract import Analysis, AnalysisConfig, AnalysisResult, AnalysisSkipped
    from disentbench.core.analysis.table import StudyTable
    from disentbench.core.config.grid import expand_grid
    from disentbench.core.config.load import load_study_config
    from disentbench.core.contracts import Metric, Model, ModelConfig, PluginConfig, Scorer, Task
    from disentbench.core.data.ground_truth import GroundTruthData
    from disentbench.core.evaluation.api import score_codes, score_representation
    from disentbench.core.nets.vae import GaussianVAE, GaussianVAEConfig
    from disentbench.core.registry import get_plugin_manager
    from disentbench.core.study.jobs import Executor, RunJob, RunOutcome
    from disentbench.core.study.run import run_study


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'disentbench' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
