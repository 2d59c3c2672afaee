"""Validating a study config in full, before any work starts, with every problem at once.

This is the one entry point that puts the other rooms of ``core.config``
together: the file is read (``files``), its structure checked against the
schema (``schema``), each plugin's params, sweep values one by one, against
that plugin's own config class, and, once everything else is valid, the grid
checked for entries that expand to the same run (``grid``); all problems are
collected, worded (``problems``) and raised together as one
:class:`ConfigError`. It sits above those modules, so none imports it back.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from disentbench.core.config.files import read_config_file
from disentbench.core.config.grid import duplicate_run_problems
from disentbench.core.config.problems import ConfigError, did_you_mean, error_message, pydantic_problems, value_problems
from disentbench.core.config.schema import DEFAULT_MAX_RUNS, ModelEntry, PluginRef, StudyConfig, plugin_shorthand
from disentbench.core.registry import PluginRegistry

_RefT = TypeVar("_RefT", bound=PluginRef)


def validate_plugin_params(
    registry: PluginRegistry, kind: str, ref: PluginRef, path: str, problems: list[str]
) -> BaseModel | None:
    try:
        registration = registry.get(kind, ref.name)
    except KeyError as exc:
        message = str(exc.args[0])
        close = difflib.get_close_matches(ref.name, registry.names(kind), n=1) if kind in registry.plugins else []
        if close and "; known:" in message:
            message = message.replace("; known:", f"; did you mean {close[0]!r}? known:", 1)
        problems.append(f"{path}.name: {message}")
        return None
    try:
        config = registration.make_config(ref.params)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, f"{path}.params", registration.config))
        return None
    found: list[str] = []
    value_problems(ref.params, config.model_dump(), f"{path}.params", found)
    problems.extend(found)
    return None if found else config


def _validate_sweep(registry: PluginRegistry, entry: ModelEntry, path: str, problems: list[str]) -> None:
    schema = registry.get("model", entry.name).config
    for param, values in entry.sweep.items():
        if param not in schema.model_fields:
            known = list(schema.model_fields)
            problems.append(
                f"{path}.sweep.{param}: {entry.name} has no parameter {param!r}; "
                f"{did_you_mean(param, known)}known: {', '.join(known)}"
            )
            continue
        for j, value in enumerate(values):
            where = f"{path}.sweep.{param}[{j}]"
            try:
                validated = schema.model_validate({**entry.params, param: value})
            except ValidationError as exc:
                for err in exc.errors():
                    if err["loc"] and err["loc"][0] == param:
                        problems.append(f"{where}: {error_message(err, tuple(err['loc']), schema)}")
                continue
            value_problems(value, validated.model_dump().get(param), where, problems)


def _entries(raw: dict[str, Any], key: str, cls: type[_RefT]) -> list[tuple[int, _RefT]]:
    """The entries of the list ``raw[key]`` whose own structure is valid (the rest are schema problems)."""
    values = raw.get(key)
    if not isinstance(values, list):
        return []
    entries = []
    for i, value in enumerate(values):
        try:
            entries.append((i, cls.model_validate(plugin_shorthand(value))))
        except ValidationError:
            pass
    return entries


def _count(value: Any) -> int | None:
    """How many entries a list setting has (a non-list: one entry), None when it is not a list or a string/mapping."""
    if isinstance(value, list):
        return len(value)
    return 1 if isinstance(value, (str, dict)) else None


def grid_size(raw: dict[str, Any]) -> tuple[int, str] | None:
    """The number of runs ``raw`` expands to and how (``2 datasets x 36 model cells x 50 seeds``), by arithmetic.

    Computed from the raw config before anything is validated or expanded, so a
    grid of 10^9 runs costs nothing to refuse. None when the structure is too
    broken to count (the schema check then says why).
    """
    datasets = _count(raw.get("datasets"))
    models = raw.get("models")
    models = [models] if isinstance(models, (str, dict)) else models
    if datasets is None or not isinstance(models, list):
        return None
    cells = 0
    for entry in models:
        sweep = entry.get("sweep") if isinstance(entry, dict) else None
        product = 1
        if isinstance(sweep, dict):
            for values in sweep.values():
                if isinstance(values, list):
                    product *= max(len(values), 1)
        cells += product
    seeds_raw = raw.get("seeds", 1)
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        seeds = max(seeds_raw, 1)
    elif isinstance(seeds_raw, list):
        seeds = max(len(seeds_raw), 1)
    else:
        return None
    total = datasets * cells * seeds
    return total, f"{datasets:,} dataset(s) x {cells:,} model cell(s) x {seeds:,} seed(s)"


def grid_limit_problem(raw: dict[str, Any], max_runs: int | None = None) -> str | None:
    """One line when the grid has more runs than ``max_runs`` (else the config's ``max_runs``, else the default)."""
    size = grid_size(raw)
    if size is None:
        return None
    total, how = size
    configured = raw.get("max_runs")
    if max_runs is None:
        max_runs = configured if isinstance(configured, int) and not isinstance(configured, bool) else DEFAULT_MAX_RUNS
    if total <= max_runs:
        return None
    return (
        f"<config>: the grid has {total:,} runs ({how}), more than the limit of {max_runs:,}; give fewer seeds or "
        "sweep values, or raise the limit with `max_runs: N` in the config or `disentbench run --max-runs N`"
    )


def _total_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None


def batch_size_problems(config: StudyConfig, registry: PluginRegistry) -> list[str]:
    """``training.batch_size`` against each dataset: no more than its observations, one batch fits in memory.

    Dataset plugins are built from their validated params (cheap: no pixels are
    read); a plugin that cannot say its size is skipped here and fails later as before.
    """
    from disentbench.core.data.ground_truth import GroundTruthData

    problems: list[str] = []
    batch = config.training.batch_size
    memory = _total_memory()
    for i, ref in enumerate(config.datasets):
        try:
            registration = registry.get("dataset", ref.name)
            dataset = registration.factory(registration.make_config(ref.params))
            size = int(dataset.num_observations)
            shape_known = type(dataset).observation_shape is not GroundTruthData.observation_shape
            shape = tuple(dataset.observation_shape) if shape_known else None
        except Exception:
            continue
        if batch > size:
            problems.append(
                f"training.batch_size: {batch:,} is more than the {size:,} observations of datasets[{i}] "
                f"({ref.name}); use at most {size:,} (the study uses 64)"
            )
        elif shape is not None and memory is not None and batch * math.prod(shape) * 4 > memory:
            gib = batch * math.prod(shape) * 4 / 2**30
            problems.append(
                f"training.batch_size: one batch of {batch:,} {ref.name} images is {gib:,.0f} GiB as float32, "
                f"more than this machine's {memory / 2**30:,.0f} GiB of memory; use a smaller batch (the study uses 64)"
            )
    return problems


def validate_study(raw: dict[str, Any], registry: PluginRegistry, max_runs: int | None = None) -> StudyConfig:
    """Validate a raw config dict fully (structure and every plugin's params), reporting every problem at once.

    Plugin params are checked even where the structure has problems elsewhere: each
    dataset, model, metric, task and executor entry whose own shape is valid is
    checked against its plugin. Only the grid check (no two grid entries that
    expand to the same run) needs a config without any other problem. A grid
    larger than ``max_runs`` (default: the config's ``max_runs``) is refused
    first, by arithmetic, before any list in it is validated or expanded.
    """
    too_big = grid_limit_problem(raw, max_runs)
    if too_big is not None:
        raise ConfigError([too_big])
    problems: list[str] = []
    config: StudyConfig | None = None
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, root=StudyConfig))

    if config is not None:
        datasets = list(enumerate(config.datasets))
        models = list(enumerate(config.models))
        metrics = list(enumerate(config.evaluation.metrics))
        tasks = list(enumerate(config.evaluation.tasks))
        executors = [(0, config.executor)]
    else:  # the structure has problems: check the plugin entries that are well-formed themselves
        raw_evaluation = raw.get("evaluation")
        evaluation: dict[str, Any] = raw_evaluation if isinstance(raw_evaluation, dict) else {}
        datasets = _entries(raw, "datasets", PluginRef)
        models = _entries(raw, "models", ModelEntry)
        metrics = _entries(evaluation, "metrics", PluginRef)
        tasks = _entries(evaluation, "tasks", PluginRef)
        executors = _entries({"executor": [raw.get("executor", "local")]}, "executor", PluginRef)

    before = len(problems)
    for i, ref in datasets:
        validate_plugin_params(registry, "dataset", ref, f"datasets[{i}]", problems)
    for i, entry in models:
        path = f"models[{i}]"
        fixed = validate_plugin_params(registry, "model", entry, path, problems)
        if fixed is not None:
            _validate_sweep(registry, entry, path, problems)
    for i, ref in metrics:
        validate_plugin_params(registry, "metric", ref, f"evaluation.metrics[{i}]", problems)
    for i, ref in tasks:
        validate_plugin_params(registry, "task", ref, f"evaluation.tasks[{i}]", problems)
    for _, ref in executors:
        validate_plugin_params(registry, "executor", ref, "executor", problems)
    if config is not None and len(problems) == before:
        problems.extend(duplicate_run_problems(config, registry))
        problems.extend(batch_size_problems(config, registry))
    if problems:
        raise ConfigError(problems)
    if config is None:  # a failed validation always adds a problem
        raise RuntimeError("study config failed validation without a reported problem")
    return config


def load_study_config(
    path_or_dict: str | Path | dict[str, Any], registry: PluginRegistry | None = None, max_runs: int | None = None
) -> StudyConfig:
    """Read and fully validate a study config (file path or dict); ``max_runs`` overrides the config's limit."""
    if registry is None:
        from disentbench.core.registry import get_plugin_manager

        registry = get_plugin_manager()
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        raw = read_config_file(path_or_dict)
    return validate_study(raw, registry, max_runs)
