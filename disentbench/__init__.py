"""disentbench: large studies of disentangled representation learning in PyTorch.

Public API::

    from disentbench import hookimpl            # decorate plugin hook implementations
    from disentbench import get_plugin_manager  # the registry of all plugins
    from disentbench import load_study_config, expand_grid, run_study
    from disentbench import score_codes, score_representation  # metrics as a library
"""

from __future__ import annotations

from disentbench.core.hookspecs import hookimpl
from disentbench.version import __version__

__all__ = [
    "__version__",
    "hookimpl",
    "get_plugin_manager",
    "load_study_config",
    "expand_grid",
    "run_study",
    "score_codes",
    "score_representation",
]


def __getattr__(name):
    # Lazy re-exports: importing disentbench (e.g. for `hookimpl` in a plugin
    # module) must not pull in torch, mlflow and every built-in plugin.
    if name == "get_plugin_manager":
        from disentbench.core.registry import get_plugin_manager

        return get_plugin_manager
    if name == "load_study_config":
        from disentbench.core.config.load import load_study_config

        return load_study_config
    if name == "expand_grid":
        from disentbench.core.config.grid import expand_grid

        return expand_grid
    if name == "run_study":
        from disentbench.core.study.run import run_study

        return run_study
    if name in ("score_codes", "score_representation"):
        from disentbench.core.evaluation import api

        return getattr(api, name)
    raise AttributeError(f"module 'disentbench' has no attribute {name!r}")
