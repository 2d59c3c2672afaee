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

from disentbench.core.config import StudyConfig
from disentbench.core.plugins import PluginRegistry

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


def expand_grid(config: StudyConfig, registry: PluginRegistry | None = None) -> list[RunSpec]:
    """All runs of a validated study, in order datasets x models x sweep x seeds."""
    if registry is None:
        from disentbench.core.plugins import get_plugin_manager

        registry = get_plugin_manager()
    specs: list[RunSpec] = []
    for dataset_ref in config.datasets:
        dataset_params = registry.get("dataset", dataset_ref.name).make_config(dataset_ref.params).model_dump(mode="json")
        for model_entry in config.models:
            schema = registry.get("model", model_entry.name)
            names = list(model_entry.sweep)
            for values in itertools.product(*(model_entry.sweep[n] for n in names)):
                params = {**model_entry.params, **dict(zip(names, values))}
                if config.training.learning_rate is not None:
                    params["learning_rate"] = config.training.learning_rate
                resolved = schema.make_config(params).model_dump(mode="json")
                swept = {n: resolved[n] for n in names}
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
                        steps=config.training.steps,
                        batch_size=config.training.batch_size,
                    )
                    specs.append(_with_key(spec))
    return specs


def _with_key(spec: RunSpec) -> RunSpec:
    object.__setattr__(spec, "run_key", stable_hash(spec.identity()))
    return spec
