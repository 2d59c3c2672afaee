"""Scores for runs that finished before the config asked for them, and which scores a summary shows.

A study re-run with new metrics or tasks should not retrain finished runs: their
``checkpoints/model.pt`` artifact is loaded and scored with just the scorers
that left no score yet, and the new scores are merged into the run's record.
This lives apart from training because it starts from the tracking store, not
from a job, and runs in the parent process after the executor is done. The
headline keys are here too: both questions are "which scorer owns which score
keys", answered through :func:`~disentbench.core.evaluation.evaluate.score_prefix`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from disentbench.core.config.grid import RunSpec
from disentbench.core.config.schema import StudyConfig
from disentbench.core.display.progress import StudyProgress
from disentbench.core.evaluation.evaluate import evaluate, score_prefix
from disentbench.core.messages import first_line
from disentbench.core.study.context import Scorer, StudyContext
from disentbench.core.study.jobs import RunOutcome
from disentbench.core.study.recording import scores_of
from disentbench.core.training.trainer import build_model


def headline_keys(config: StudyConfig, scorers: list[Scorer], outcomes: list[RunOutcome]) -> list[str]:
    """Full score names of each scorer's ``headline`` keys (all its keys if it declares none)."""
    recorded = {key for outcome in outcomes for key in outcome.scores}
    keys: list[str] = []
    for representation in config.evaluation.representations:
        for kind, name, scorer in scorers:
            prefix = score_prefix(kind, representation, name)
            headline = getattr(scorer, "headline", None)
            names = [prefix + k for k in headline] if headline else sorted(k for k in recorded if k.startswith(prefix))
            keys.extend(k for k in names if k in recorded)
    return keys


def _unscored(config: StudyConfig, scorers: list[Scorer], metrics: dict[str, float]) -> dict[str, list[Scorer]]:
    """Per representation, the scorers that left no score in ``metrics`` (added after the run finished)."""
    missing: dict[str, list[Scorer]] = {}
    for representation in config.evaluation.representations:
        for kind, name, scorer in scorers:
            prefix = score_prefix(kind, representation, name)
            if not any(key.startswith(prefix) for key in metrics):
                missing.setdefault(representation, []).append((kind, name, scorer))
    return missing


def score_finished_runs(
    finished: list, ctx: StudyContext, outcomes: dict[str, RunOutcome], bar: StudyProgress
) -> None:
    """Score finished runs with the metrics and tasks the config gained since they finished.

    ``finished`` holds (spec, MLflow run) pairs; ``outcomes`` (by run key) gets
    a skipped outcome with the merged scores for each run scored. The model
    comes from the run's ``checkpoints/model.pt`` artifact; the new scores
    equal those a full evaluation would have given (each metric's draws depend
    only on the evaluation seed and its name). In this process, after the
    executor's jobs.
    """
    config, tracker = ctx.config, ctx.tracker
    todo = [(spec, run, _unscored(config, ctx.scorers, run.data.metrics)) for spec, run in finished]
    todo = [(spec, run, missing) for spec, run, missing in todo if missing]
    if not todo:
        return
    names = sorted({name for _, _, missing in todo for scorers in missing.values() for _, name, _ in scorers})
    bar.message(f"{len(todo)} finished runs lack scores for {', '.join(names)}; scoring them from their checkpoints")
    for spec, run, missing in todo:
        run_id = run.info.run_id
        try:
            scores = _score_checkpoint(spec, ctx, run_id, missing)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            bar.message(f"{spec.run_name}: cannot score its checkpoint ({reason}); skipped")
            continue
        merged = {**scores_of(run.data.metrics), **scores}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scores.json"
            path.write_text(json.dumps(merged, indent=2, sort_keys=True))
            tracker.log_artifact(run_id, path)
        outcomes[spec.run_key] = RunOutcome(spec, "skipped", run_id, merged)


def _score_checkpoint(
    spec: RunSpec, ctx: StudyContext, run_id: str, missing: dict[str, list[Scorer]]
) -> dict[str, float]:
    """Load a finished run's model artifact, score it with ``missing`` (per representation), log the scores."""
    config, tracker, device, registry = ctx.config, ctx.tracker, ctx.device, ctx.registry
    data = ctx.datasets.get(spec.dataset, spec.dataset_params)
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.client.download_artifacts(run_id, "checkpoints/model.pt", tmp)
        saved = torch.load(path, map_location=device, weights_only=True)
    registration = registry.get("model", spec.model)
    model = build_model(registration.factory, registration.make_config(spec.model_params), data.observation_shape, spec.seed, device)
    model.load_state_dict(saved["state_dict"])
    scores: dict[str, float] = {}
    for representation, scorers in missing.items():
        scores.update(
            evaluate(
                model, data, scorers, [representation], device=device,
                evaluation_seed=config.evaluation.seed, batch_size=config.evaluation.batch_size,
                seed_convention=config.evaluation.seed_convention, workers=config.evaluation.worker_count,
            )  # fmt: skip
        )
    tracker.log_metrics(run_id, scores, step=spec.steps)
    return scores
