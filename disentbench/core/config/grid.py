"""Grid expansion: datasets x models x sweep values x seeds -> one RunSpec each.

Each RunSpec carries the fully resolved (defaults filled in) config of what it
trains, and a stable ``run_key``: the SHA-256 of that config's canonical JSON.
Identical configs give identical keys in any process on any machine; anything
that changes what is trained (a param, a default, steps, batch size, seed)
changes the key. The device and the evaluation settings are not part of it:
the same run trained on another card is the same run, and adding a metric
re-scores runs instead of retraining them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from disentbench.core.config.schema import StudyConfig
from disentbench.core.registry import PluginRegistry

KEY_LENGTH = 16


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(value: Any, length: int = KEY_LENGTH) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: what to train, on what, with which seed."""

    study: str
    index: int
    dataset: str
    dataset_params: dict[str, Any]
    model: str
    model_params: dict[str, Any]
    swept: dict[str, Any]  # the swept subset of model_params, for names and tables
    seed: int
    steps: int
    batch_size: int
    run_key: str = field(default="")

    def identity(self) -> dict[str, Any]:
        """Everything that determines the trained model; hashed into the run key."""
        return {
            "dataset": {"name": self.dataset, "params": self.dataset_params},
            "model": {"name": self.model, "params": self.model_params},
            "seed": self.seed,
            "training": {"steps": self.steps, "batch_size": self.batch_size},
        }

    @property
    def run_name(self) -> str:
        swept = " ".join(f"{k}={_short(v)}" for k, v in self.swept.items())
        return " ".join(part for part in (self.model, swept, self.dataset, f"s={self.seed}") if part)


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _model_cells(config: StudyConfig, registry: PluginRegistry, entry: Any):
    """Each grid cell of one model entry, in grid order: (sweep indices by param, resolved params, swept subset)."""
    schema = registry.get("model", entry.name)
    names = list(entry.sweep)
    for indices in itertools.product(*(range(len(entry.sweep[n])) for n in names)):
        params = {**entry.params, **{n: entry.sweep[n][i] for n, i in zip(names, indices)}}
        if config.training.learning_rate is not None:
            params["learning_rate"] = config.training.learning_rate
        resolved = schema.make_config(params).model_dump(mode="json")
        yield dict(zip(names, indices)), resolved, {n: resolved[n] for n in names}


def expand_grid(config: StudyConfig, registry: PluginRegistry | None = None) -> list[RunSpec]:
    """All runs of a validated study, in order datasets x models x sweep x seeds."""
    if registry is None:
        from disentbench.core.registry import get_plugin_manager

        registry = get_plugin_manager()
    specs: list[RunSpec] = []
    for dataset_ref in config.datasets:
        dataset_params = registry.get("dataset", dataset_ref.name).make_config(dataset_ref.params).model_dump(mode="json")
        for model_entry in config.models:
            for _, resolved, swept in _model_cells(config, registry, model_entry):
                for seed in config.seeds:
                    spec = RunSpec(
                        study=config.name,
                        index=len(specs),
                        dataset=dataset_ref.name,
                        dataset_params=dataset_params,
                        model=model_entry.name,
                        model_params=resolved,
                        swept=swept,
                        seed=seed,
                        steps=model_entry.training.steps or config.training.steps,
                        batch_size=model_entry.training.batch_size or config.training.batch_size,
                    )
                    specs.append(_with_key(spec))
    return specs


def duplicate_run_problems(config: StudyConfig, registry: PluginRegistry) -> list[str]:
    """One line per pair of grid entries that expand to the same run (the same run key); [] if none.

    Seeds are unique (the config schema checks), and the run key is the dataset's
    and the model's resolved params (plus seed and the shared training settings),
    so two runs coincide exactly when two datasets resolve alike or two model
    cells (entry x swept values) resolve alike, e.g. ``beta: [1, 1.0]``.
    """
    problems: list[str] = []
    datasets: dict[str, int] = {}
    for i, ref in enumerate(config.datasets):
        params = registry.get("dataset", ref.name).make_config(ref.params).model_dump(mode="json")
        identity = canonical_json({"name": ref.name, "params": params})
        if identity in datasets:
            problems.append(
                f"datasets[{i}]: {ref.name!r} is listed twice (also datasets[{datasets[identity]}], with the same "
                "params), so every run would be trained twice; remove one"
            )
        else:
            datasets[identity] = i

    cells: dict[str, tuple[int, dict[str, int]]] = {}
    reported: set[Any] = set()
    override = config.training.learning_rate is not None
    for m, entry in enumerate(config.models):
        for indices, resolved, _ in _model_cells(config, registry, entry):
            training = (entry.training.steps or config.training.steps, entry.training.batch_size or config.training.batch_size)
            identity = canonical_json({"name": entry.name, "params": resolved, "training": training})
            if identity not in cells:
                cells[identity] = (m, indices)
                continue
            m0, indices0 = cells[identity]
            if m0 == m:
                differ = [n for n in indices if indices[n] != indices0[n]]
                key: Any = (m, tuple(differ), tuple(indices[n] for n in differ), tuple(indices0[n] for n in differ))
                if len(differ) == 1:
                    n = differ[0]
                    value, first = entry.sweep[n][indices[n]], entry.sweep[n][indices0[n]]
                    where = f"models[{m}].sweep.{n}[{indices[n]}]"
                    if n == "learning_rate" and override:
                        message = (
                            f"{where}: {value!r} gives the same run as {n}[{indices0[n]}] ({first!r}) because "
                            "training.learning_rate overrides every model's learning_rate; drop one of the two settings"
                        )
                    else:
                        message = (
                            f"{where}: {value!r} is the same value as {n}[{indices0[n]}] ({first!r}), so both give "
                            "the same run; remove one"
                        )
                else:
                    these = ", ".join(f"{n}[{indices[n]}]" for n in differ)
                    those = ", ".join(f"{n}[{indices0[n]}]" for n in differ)
                    message = f"models[{m}].sweep: {these} give the same run as {those}; remove one of them"
            else:
                key = (m0, m)
                if canonical_json(config.models[m0].model_dump(mode="json")) == canonical_json(entry.model_dump(mode="json")):
                    message = f"models[{m}]: the same entry as models[{m0}] ({entry.name!r}), listed twice; remove one"
                else:
                    swept = " ".join(f"{n}={entry.sweep[n][i]!r}" for n, i in indices.items())
                    swept0 = " ".join(f"{n}={config.models[m0].sweep[n][i]!r}" for n, i in indices0.items())
                    message = (
                        f"models[{m}]: {entry.name}{' ' + swept if swept else ''} gives the same run as "
                        f"models[{m0}]{' with ' + swept0 if swept0 else ''}; remove the overlap"
                    )
            if key not in reported:
                reported.add(key)
                problems.append(message)
    return problems


def _with_key(spec: RunSpec) -> RunSpec:
    object.__setattr__(spec, "run_key", stable_hash(spec.identity()))
    return spec
