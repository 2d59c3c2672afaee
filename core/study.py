"""Run a study: validated config -> grid -> executor -> train, evaluate, record in MLflow.

Nothing is written to the tracking store before the whole config has been
validated. Re-running a study skips every run key that already finished; an
unfinished run of the same key is reused (not duplicated) and resumes from its
local checkpoint.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from disentbench.core import images, tracking
from disentbench.core.config import StudyConfig
from disentbench.core.evaluation import evaluate
from disentbench.core.grid import RunSpec, canonical_json, expand_grid
from disentbench.core.plugins import PluginRegistry, get_plugin_manager
from disentbench.core.progress import StudyProgress
from disentbench.core.trainer import Trainer, build_model, resolve_device


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # "finished" | "skipped" | "failed"
    run_id: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class StudyResult:
    config: StudyConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    outcomes: list[RunOutcome]
    headline_keys: list[str] = field(default_factory=list)  # the scores a summary table shows

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class _DatasetCache:
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


def run_study(
    config: StudyConfig,
    *,
    registry: PluginRegistry | None = None,
    device: str | None = None,
    tracking_uri: str | None = None,
    config_path: Path | None = None,
    progress: bool = True,
) -> StudyResult:
    registry = registry or get_plugin_manager()
    specs = expand_grid(config, registry)
    torch_device = resolve_device(device or config.training.device)

    # Load every dataset first: a missing file is a one-line error before
    # anything is written to the tracking store.
    datasets = _DatasetCache(registry)
    for spec in specs:
        datasets.get(spec.dataset, spec.dataset_params).check()

    tracker = tracking.Tracker(tracking_uri or config.tracking.uri, config.experiment_name)
    recorded = tracker.runs_by_key()
    todo, outcomes_by_key = [], {}
    reuse: dict[str, str] = {}
    for spec in specs:
        runs = recorded.get(spec.run_key, [])
        if tracking.status_of(runs) == tracking.FINISHED:
            finished = next(r for r in runs if r.info.status == tracking.FINISHED)
            outcomes_by_key[spec.run_key] = RunOutcome(
                spec, "skipped", finished.info.run_id, _scores_of(finished.data.metrics)
            )
        else:
            if runs:  # interrupted or failed before: continue that run, never a duplicate
                reuse[spec.run_key] = runs[0].info.run_id
            todo.append(spec)

    parent_run_id = tracker.start_study_run(config.name, len(specs), config_path)
    tracker.log_params(parent_run_id, {"config": canonical_json(config.model_dump(mode="json"))[:6000]})

    scorers = []
    for kind, refs in (("metric", config.evaluation.metrics), ("task", config.evaluation.tasks)):
        for ref in refs:
            registration = registry.get(kind, ref.name)
            scorers.append((kind, ref.name, registration.factory(registration.make_config(ref.params))))

    bar = StudyProgress(sum(s.steps for s in todo), enabled=progress)
    if len(todo) < len(specs):
        bar.message(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; skipping them")

    def worker(spec: RunSpec) -> RunOutcome:
        started = time.perf_counter()
        run_id = tracker.start_run(spec, parent_run_id, reuse.get(spec.run_key), config.tracking.index_tag)
        bar.start_run(f"[{spec.index + 1}/{len(specs)}] {spec.run_name}")
        try:
            scores = _train_and_evaluate(spec, config, registry, datasets, scorers, torch_device, tracker, run_id, bar)
        except KeyboardInterrupt:
            tracker.end_run(run_id, tracking.KILLED)
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            tracker.set_tags(run_id, {"error": message[:5000]})
            with tempfile.TemporaryDirectory() as tmp:
                trace = Path(tmp) / "error.txt"
                trace.write_text(traceback.format_exc())
                tracker.log_artifact(run_id, trace)
            tracker.end_run(run_id, tracking.FAILED)
            bar.message(f"run {spec.run_name} failed: {message}")
            return RunOutcome(spec, "failed", run_id, error=message, seconds=time.perf_counter() - started)
        tracker.end_run(run_id, tracking.FINISHED)
        return RunOutcome(spec, "finished", run_id, scores, seconds=time.perf_counter() - started)

    executor_reg = registry.get("executor", config.executor.name)
    executor = executor_reg.factory(executor_reg.make_config(config.executor.params))
    try:
        for outcome in executor.run(todo, worker):
            outcomes_by_key[outcome.spec.run_key] = outcome
    except KeyboardInterrupt:
        tracker.end_run(parent_run_id, tracking.KILLED)
        bar.close()
        raise
    bar.close()
    outcomes = [outcomes_by_key[s.run_key] for s in specs]
    failed = any(o.status == "failed" for o in outcomes)
    tracker.end_run(parent_run_id, tracking.FAILED if failed else tracking.FINISHED)
    return StudyResult(
        config, tracker.uri, tracker.experiment_id, parent_run_id, outcomes, _headline_keys(config, scorers, outcomes)
    )


def _headline_keys(config: StudyConfig, scorers, outcomes) -> list[str]:
    """Full score names of each scorer's ``headline`` keys (all its keys if it declares none)."""
    recorded = {key for outcome in outcomes for key in outcome.scores}
    keys = []
    for representation in config.evaluation.representations:
        for kind, name, scorer in scorers:
            prefix = f"{'eval' if kind == 'metric' else 'downstream'}/{representation}/{name}/"
            headline = getattr(scorer, "headline", None)
            names = [prefix + k for k in headline] if headline else sorted(k for k in recorded if k.startswith(prefix))
            keys.extend(k for k in names if k in recorded)
    return keys


def _scores_of(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("eval/", "downstream/"))}


def _train_and_evaluate(spec, config, registry, datasets, scorers, device, tracker, run_id, bar) -> dict[str, float]:
    data = datasets.get(spec.dataset, spec.dataset_params)
    model_reg = registry.get("model", spec.model)
    model = build_model(model_reg.factory, model_reg.make_config(spec.model_params), data.observation_shape, spec.seed, device)
    checkpoint = Path(config.training.checkpoint_dir) / spec.run_key / "checkpoint.pt"
    trainer = Trainer(
        model,
        data,
        seed=spec.seed,
        steps=spec.steps,
        batch_size=spec.batch_size,
        device=device,
        log_every=config.training.log_every,
        checkpoint_every=config.training.checkpoint_every,
        checkpoint_path=checkpoint,
        channels_last=config.training.channels_last,
    )
    result = trainer.train(
        on_log=lambda step, terms: tracker.log_metrics(run_id, {f"train/{k}": v for k, v in terms.items()}, step),
        on_progress=bar.update_run,
    )
    bar.finish_run(spec.steps)
    if result.resumed_from:
        tracker.set_tags(run_id, {"resumed_from_step": str(result.resumed_from)})
    tracker.log_metrics(run_id, {"train/seconds": result.seconds, "train/model_steps_per_second": result.steps / max(result.seconds, 1e-9)})

    scores = evaluate(
        model,
        data,
        scorers,
        config.evaluation.representations,
        device=device,
        evaluation_seed=config.evaluation.seed,
        batch_size=config.evaluation.batch_size,
    )
    tracker.log_metrics(run_id, scores, step=spec.steps)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        resolved = {"run_key": spec.run_key, **spec.identity(), "evaluation": config.evaluation.model_dump(mode="json")}
        (tmp / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        tracker.log_artifact(run_id, tmp / "config.yaml")
        (tmp / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
        tracker.log_artifact(run_id, tmp / "scores.json")
        images.save_png(images.reconstruction_grid(model, data, device), tmp / "reconstructions.png")
        images.save_png(images.traversal_grid(model, data, device), tmp / "traversals.png")
        tracker.log_artifact(run_id, tmp / "reconstructions.png", "images")
        tracker.log_artifact(run_id, tmp / "traversals.png", "images")
        torch.save({"model": spec.model, "model_params": spec.model_params, "state_dict": model.state_dict()}, tmp / "model.pt")
        tracker.log_artifact(run_id, tmp / "model.pt", "checkpoints")
    return scores
