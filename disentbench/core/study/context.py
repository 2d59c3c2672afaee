"""The per-process state a worker trains, evaluates and records with, as one typed object.

A worker travels between processes as plain data (config, tracking URI,
device); in whichever process it lands it builds a :class:`StudyContext` once
(plugin registry, validated config, MLflow tracker, loaded datasets, scorers,
resolved device, pack-sizing caches) and reuses it for every job. Every step of
a run (packing, training, recording, re-scoring) reads its collaborators from
this object, so what a step depends on is spelled out by field and type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from disentbench.core.config.grid import canonical_json
from disentbench.core.config.schema import StudyConfig
from disentbench.core.registry import PluginRegistry, get_plugin_manager
from disentbench.core.tracking import tracker as tracking
from disentbench.core.training.trainer import resolve_device

Scorer = tuple[str, str, Any]  # (kind "metric" | "task", plugin name, built scorer)


class DatasetCache:
    """One dataset instance per (name, params) in a process: loading is the slow part."""

    def __init__(self, registry: PluginRegistry):
        self.registry = registry
        self._cache: dict[str, Any] = {}

    def get(self, name: str, params: dict[str, Any]):
        key = canonical_json([name, params])
        if key not in self._cache:
            registration = self.registry.get("dataset", name)
            self._cache[key] = registration.factory(registration.make_config(params))
        return self._cache[key]

    def for_training(self, name: str, params: dict[str, Any]):
        """``get``, and free the device copies of every other dataset: one dataset's images on the device at a time.

        A study's runs come dataset by dataset, and ``choose_pack_size`` budgets for one dataset's images.
        """
        data = self.get(name, params)
        for other in self._cache.values():
            if other is not data:
                other.release_device_images()
        return data


def build_scorers(config: StudyConfig, registry: PluginRegistry) -> list[Scorer]:
    scorers = []
    for kind, refs in (("metric", config.evaluation.metrics), ("task", config.evaluation.tasks)):
        for ref in refs:
            registration = registry.get(kind, ref.name)
            params = dict(ref.params)
            # evaluation.fast switches on the fast variant of every scorer that has one (a `fast` config field)
            if config.evaluation.fast and "fast" in registration.config.model_fields:
                params.setdefault("fast", True)
            try:
                scorer = registration.factory(registration.make_config(params))
            except Exception as exc:  # a plugin's own bug: name it and where it comes from
                first = (str(exc).splitlines() or [""])[0]
                raise RuntimeError(
                    f"{kind} plugin {ref.name!r} (package {registration.source}) failed to start: "
                    f"{type(exc).__name__}: {first}; report it to that package's authors or leave it out of the config"
                ) from exc
            scorers.append((kind, ref.name, scorer))
    return scorers


@dataclass
class StudyContext:
    """What one process needs to run a study's jobs; built once per process by :func:`build_context`."""

    registry: PluginRegistry
    config: StudyConfig
    tracker: tracking.Tracker
    datasets: DatasetCache
    scorers: list[Scorer]
    device: torch.device
    pack_sizes: dict[str, int] = field(default_factory=dict)  # auto pack size per (model, params, dataset, batch size)
    architectures: dict[str, str] = field(default_factory=dict)  # parameter-shape signature per (model, params, dataset)


def build_context(
    config_data: dict[str, Any],
    tracking_uri: str,
    experiment_id: str,
    device: str,
    *,
    registry: PluginRegistry | None = None,
    config: StudyConfig | None = None,
    tracker: tracking.Tracker | None = None,
    datasets: DatasetCache | None = None,
    scorers: list[Scorer] | None = None,
) -> StudyContext:
    """Build a process's context; parts given (the parent's own registry, tracker, datasets...) are adopted
    instead of being built again."""
    registry = registry or get_plugin_manager()
    config = config or StudyConfig.model_validate(config_data)
    if tracker is None:
        tracker = tracking.Tracker(tracking_uri, config.experiment_name)
        tracker._experiment_id = experiment_id
    return StudyContext(
        registry=registry,
        config=config,
        tracker=tracker,
        datasets=datasets or DatasetCache(registry),
        scorers=scorers or build_scorers(config, registry),
        device=resolve_device(device),
    )
