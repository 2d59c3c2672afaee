"""What a run leaves in the tracking store when it ends: its scores and artifacts, or its failure.

Solo and packed training end a run the same way, so both hand the trained
model here: timing metrics, evaluation scores, the resolved config, images,
the score card and the model checkpoint for a finished run; the error tag and
traceback for a failed one. Keeping the record in one room keeps the MLflow
layout of a run identical whichever way it was trained, and tells readers of
the store (re-scoring, ``scores_of``) where each key comes from.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from disentbench.core.config.grid import RunSpec
from disentbench.core.display import images
from disentbench.core.display.progress import StudyProgress
from disentbench.core.evaluation.evaluate import evaluate
from disentbench.core.study.context import StudyContext
from disentbench.core.study.jobs import RunOutcome
from disentbench.core.study.locks import RunRef
from disentbench.core.tracking import tracker as tracking
from disentbench.core.training.trainer import TrainResult


def scores_of(metrics: dict[str, float]) -> dict[str, float]:
    """The evaluation scores among a recorded run's metrics."""
    return {k: v for k, v in metrics.items() if k.startswith(("eval/", "downstream/"))}


def record_failure(
    ctx: StudyContext, bar: StudyProgress, spec: RunSpec, run_id: str, exc: BaseException, trace: str, started: float
) -> RunOutcome:
    """Mark a claimed run FAILED: an ``error`` tag, the traceback as error.txt; other runs are not touched."""
    tracker = ctx.tracker
    message = f"{type(exc).__name__}: {exc}"
    tracker.set_tags(run_id, {"error": message[:5000]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "error.txt"
        path.write_text(trace)
        tracker.log_artifact(run_id, path)
    tracker.end_run(run_id, tracking.FAILED)
    bar.message(f"run {spec.run_name} failed: {message}")
    return RunOutcome(spec, "failed", run_id, error=message, seconds=time.perf_counter() - started)


def fresh_run_for_restart(tracker: tracking.Tracker, ref: RunRef, resumed_from: int) -> None:
    """Before training: a run restarting from step 0 whose MLflow run holds points of an earlier attempt
    (killed before its first checkpoint, a corrupt or unreachable checkpoint) moves to a fresh MLflow run.

    MLflow cannot delete metric points, so the old run (its curve of the
    abandoned attempt) is replaced: the fresh run takes its tags, params and
    lease and the old one goes to MLflow's trash (:meth:`Tracker.replace_run
    <disentbench.core.tracking.tracker.Tracker.replace_run>`). A run with no
    points yet, or one resuming from a checkpoint, keeps its MLflow run.
    """
    if resumed_from:
        return
    if tracker.client.get_run(ref.run_id).data.metrics:
        ref.replace(tracker.replace_run(ref.run_id))


def curve_logged_through(tracker: tracking.Tracker, run_id: str, resumed_from: int) -> int:
    """The last step of the training curve ``run_id`` holds already, for a run resuming from ``resumed_from``.

    A run killed after a curve point but before its next checkpoint resumes
    from that checkpoint and computes the points after it again (bit-identical:
    the checkpoint holds the generators too); the trainer's caller logs only
    the points after this step, so no step is in the curve twice. 0 for a run
    training from scratch (its MLflow run holds no curve: see
    :func:`fresh_run_for_restart`).
    """
    if not resumed_from:
        return 0
    client = tracker.client
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("train/")]
    return max((point.step for key in keys for point in client.get_metric_history(run_id, key)), default=0)


def _log_new_metrics(tracker: tracking.Tracker, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log the metrics the run does not have yet: a resumed evaluation never logs a score twice.

    A run's evaluation is deterministic given its trained weights (the
    checkpoint is bit-identical on resume), so a key already recorded by an
    attempt killed mid-recording holds the same value.
    """
    present = tracker.client.get_run(run_id).data.metrics
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if k not in present}, step=step)


def _evaluation_progress(spec: RunSpec, bar: StudyProgress):
    def on_score(representation: str, kind: str, name: str, scores: dict[str, float], seconds: float) -> None:
        if seconds >= 5.0:
            bar.message(f"  {spec.run_name}: {name} ({representation}) scored in {seconds:.1f} s")

    return on_score


def record_training(ctx: StudyContext, run_id: str, result: TrainResult) -> None:
    """What training leaves before evaluation: its timing metrics and the step it resumed from."""
    tracker = ctx.tracker
    if result.resumed_from:
        tracker.set_tags(run_id, {"resumed_from_step": str(result.resumed_from)})
    steps, seconds = result.cumulative
    _log_new_metrics(
        tracker, run_id, {"train/seconds": seconds, "train/model_steps_per_second": steps / max(seconds, 1e-9)}
    )


def evaluate_and_record(
    spec: RunSpec, ctx: StudyContext, run_id: str, model, result: TrainResult | None, bar: StudyProgress | None = None
) -> dict[str, float]:
    """After training (solo or packed): timing metrics, scores and artifacts of one run; returns its scores.

    ``result`` None: training was recorded already (:func:`record_training`, by a cluster's training task).
    With ``bar``, evaluation progress is shown: each scorer that takes 5 s or more as it finishes, then
    the run's total.
    """
    config, device = ctx.config, ctx.device
    tracker = ctx.tracker
    data = ctx.datasets.get(spec.dataset, spec.dataset_params)
    scorers = ctx.scorers
    if result is not None:
        record_training(ctx, run_id, result)

    evaluation_started = time.perf_counter()
    scores = evaluate(
        model,
        data,
        scorers,
        config.evaluation.representations,
        device=device,
        evaluation_seed=config.evaluation.seed,
        batch_size=config.evaluation.batch_size,
        seed_convention=config.evaluation.seed_convention,
        workers=config.evaluation.worker_count,
        on_score=_evaluation_progress(spec, bar) if bar is not None else None,
    )
    evaluation_seconds = time.perf_counter() - evaluation_started
    if bar is not None:
        bar.message(f"evaluated {spec.run_name} in {evaluation_seconds:.1f} s")
    _log_new_metrics(tracker, run_id, {"evaluation/seconds": evaluation_seconds})  # not a score: no eval/ prefix
    tracker.set_tags(
        run_id, {"evaluation.seed_convention": config.evaluation.seed_convention, "evaluation.mode": config.evaluation.mode}
    )
    _log_new_metrics(tracker, run_id, scores, step=spec.steps)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        resolved = {"run_key": spec.run_key, **spec.identity(), "evaluation": config.evaluation.model_dump(mode="json")}
        (tmp / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        tracker.log_artifact(run_id, tmp / "config.yaml")
        (tmp / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
        tracker.log_artifact(run_id, tmp / "scores.json")
        images.save_png(images.reconstruction_grid(model, data, device), tmp / "reconstructions.png")
        traversals = images.traversal_images(model, data, device)  # decoded once: PNG grid and GIF
        kl = images.latent_kl(model, data, device)  # each latent's label: its mean KL over a batch
        images.save_png(images.labelled_traversal_grid(traversals, kl), tmp / "traversals.png")
        images.save_traversal_gif(traversals, tmp / "traversals.gif", kl=kl)
        card = images.score_card(
            spec.run_name,
            {**spec.swept, **{k: v for k, v in spec.model_params.items() if k not in spec.swept},
             "steps": spec.steps, "batch_size": spec.batch_size},
            scores,
            {name: getattr(scorer, "headline", None) for _, name, scorer in scorers},
            subtitle=f"model {spec.model} · dataset {spec.dataset} · seed {spec.seed} · run key {spec.run_key}",
        )
        images.save_figure(card, tmp / "score_card.png")
        for name in ("reconstructions.png", "traversals.png", "traversals.gif", "score_card.png"):
            tracker.log_artifact(run_id, tmp / name, "images")
        torch.save({"model": spec.model, "model_params": spec.model_params, "state_dict": model.state_dict()}, tmp / "model.pt")
        tracker.log_artifact(run_id, tmp / "model.pt", "checkpoints")
    return scores
