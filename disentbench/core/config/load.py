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
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from disentbench.core.config.files import read_config_file
from disentbench.core.config.grid import duplicate_run_problems
from disentbench.core.config.problems import ConfigError, did_you_mean, error_message, pydantic_problems, value_problems
from disentbench.core.config.schema import ModelEntry, PluginRef, StudyConfig, plugin_shorthand
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


def validate_study(raw: dict[str, Any], registry: PluginRegistry) -> StudyConfig:
    """Validate a raw config dict fully (structure and every plugin's params), reporting every problem at once.

    Plugin params are checked even where the structure has problems elsewhere: each
    dataset, model, metric, task and executor entry whose own shape is valid is
    checked against its plugin. Only the grid check (no two grid entries that
    expand to the same run) needs a config without any other problem.
    """
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
    if problems:
        raise ConfigError(problems)
    if config is None:  # a failed validation always adds a problem
        raise RuntimeError("study config failed validation without a reported problem")
    return config


def load_study_config(path_or_dict: str | Path | dict[str, Any], registry: PluginRegistry | None = None) -> StudyConfig:
    """Read and fully validate a study config (file path or dict)."""
    if registry is None:
        from disentbench.core.registry import get_plugin_manager

        registry = get_plugin_manager()
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        raw = read_config_file(path_or_dict)
    return validate_study(raw, registry)
