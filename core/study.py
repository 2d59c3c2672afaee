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


@dataclass(frozen=True)
class RunJob:
    """One run to execute: picklable, so executors can ship it to other processes or machines."""

    spec: RunSpec
    parent_run_id: str
    reuse_run_id: str | None
    position: int  # 1-based among this invocation's runs
    total: int


class Worker:
    """Trains, evaluates and records RunJobs.

    Picklable: only the validated config (as data), the tracking URI and the
    device travel; the plugin registry, datasets, scorers and MLflow client are
    rebuilt lazily in whichever process calls it, and reused across its jobs.
    """

    def __init__(self, config: StudyConfig, tracking_uri: str, experiment_id: str, device: str, progress: bool = True):
        self.config_data = config.model_dump(mode="json")
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.device = device
        self.progress = progress
        self.bar: StudyProgress | None = None
        self._state: dict[str, Any] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["bar"] = None
        state["_state"] = None
        return state

    def with_device(self, device: str) -> "Worker":
        clone = Worker.__new__(Worker)
        clone.__dict__.update(self.__getstate__())
        clone.device = device
        return clone

    def _context(self, **prebuilt: Any) -> dict[str, Any]:
        """The per-process state, built on first use; ``prebuilt`` parts (the parent's own
        registry, tracker, datasets...) are adopted instead of being built again."""
        if self._state is None:
            from disentbench.core.config import StudyConfig

            registry = prebuilt.get("registry") or get_plugin_manager()
            config = prebuilt.get("config") or StudyConfig.model_validate(self.config_data)
            tracker = prebuilt.get("tracker")
            if tracker is None:
                tracker = tracking.Tracker(self.tracking_uri, config.experiment_name)
                tracker._experiment_id = self.experiment_id
            self._state = {
                "registry": registry,
                "config": config,
                "tracker": tracker,
                "datasets": prebuilt.get("datasets") or _DatasetCache(registry),
                "scorers": prebuilt.get("scorers") or build_scorers(config, registry),
                "device": resolve_device(self.device),
            }
        return self._state

    def __call__(self, job: RunJob) -> RunOutcome:
        ctx = self._context()
        config, tracker, spec = ctx["config"], ctx["tracker"], job.spec
        bar = self.bar or StudyProgress(spec.steps, enabled=False)
        started = time.perf_counter()
        checkpoint_dir = Path(config.training.checkpoint_dir) / spec.run_key
        with RunLock(checkpoint_dir.with_suffix(".lock")) as lock:
            if not lock.acquired:
                return RunOutcome(spec, "skipped", error="being trained by another process on this machine")
            run_id = tracker.claim_run(spec, job.parent_run_id, job.reuse_run_id, config.tracking.index_tag)
            if run_id is None:
                return RunOutcome(spec, "skipped", error="claimed by another invocation")
            bar.start_run(f"[{job.position}/{job.total}] {spec.run_name}")
            try:
                scores = _train_and_evaluate(spec, ctx, run_id, bar, checkpoint_dir / "checkpoint.pt")
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


class RunLock:
    """A non-blocking per-run-key file lock (``fcntl.flock``); released by the OS if the process dies.

    Two invocations on one machine never train the same run at once; a run
    left RUNNING by a killed process is recognised as free.
    """

    def __init__(self, path: Path):
        self.path = path
        self.acquired = False
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
        except BlockingIOError:
            self.acquired = False
        except ImportError:  # no fcntl (Windows): rely on the MLflow claim alone
            self.acquired = True
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock


def build_scorers(config: StudyConfig, registry: PluginRegistry) -> list[tuple[str, str, Any]]:
    scorers = []
    for kind, refs in (("metric", config.evaluation.metrics), ("task", config.evaluation.tasks)):
        for ref in refs:
            registration = registry.get(kind, ref.name)
            scorers.append((kind, ref.name, registration.factory(registration.make_config(ref.params))))
    return scorers


def run_study(
    config: StudyConfig,
    *,
    registry: PluginRegistry | None = None,
    device: str | None = None,
    tracking_uri: str | None = None,
    config_path: Path | None = None,
    progress: bool = True,
    executor: str | None = None,
) -> StudyResult:
    """Run every unfinished run of ``config``; returns outcomes in grid order.

    Finished run keys are skipped; an unfinished run of the same key is
    continued (its MLflow run reused, training resumed from its checkpoint).
    """
    registry = registry or get_plugin_manager()
    specs = expand_grid(config, registry)
    device = device or config.training.device
    resolve_device(device)  # fail on an impossible device before writing anything

    # Check every dataset's files first: a missing file is a one-line error
    # before anything is written to the tracking store.
    datasets = _DatasetCache(registry)
    for spec in specs:
        datasets.get(spec.dataset, spec.dataset_params).check()

    # --executor NAME keeps the config's executor params when it names the same executor
    executor_ref = config.executor if executor in (None, config.executor.name) else type(config.executor)(name=executor)
    executor_reg = registry.get("executor", executor_ref.name)
    executor_obj = executor_reg.factory(executor_reg.make_config(executor_ref.params))
    if hasattr(executor_obj, "check"):  # e.g. an optional extra not installed: fail before any write
        executor_obj.check()
    checkpoint_root = Path(config.training.checkpoint_dir)
    try:
        checkpoint_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"training.checkpoint_dir {str(checkpoint_root)!r}: cannot create it ({exc.strerror})") from None

    tracker = tracking.Tracker(tracking_uri or config.tracking.uri, config.experiment_name)
    recorded = tracker.runs_by_key()
    todo, outcomes_by_key = [], {}
    reuse: dict[str, str] = {}
    for spec in specs:
        runs = recorded.get(spec.run_key, [])
        if tracking.status_of(runs) == tracking.FINISHED:
            finished = next(r for r in runs if r.info.status == tracking.FINISHED)
            outcomes_by_key[spec.run_key] = RunOutcome(spec, "skipped", finished.info.run_id, _scores_of(finished.data.metrics))
        else:
            if runs:  # interrupted or failed before: continue that run, never a duplicate
                reuse[spec.run_key] = runs[0].info.run_id
            todo.append(spec)

    # The parent creates the experiment and its run before any worker starts;
    # workers log to explicit run ids.
    parent_run_id = tracker.start_study_run(config.name, len(specs), config_path)
    tracker.log_params(parent_run_id, {"config": canonical_json(config.model_dump(mode="json"))[:6000]})
    scorers = build_scorers(config, registry)

    worker = Worker(config, tracker.uri, tracker.experiment_id, device, progress)
    bar = StudyProgress(sum(s.steps for s in todo), enabled=progress)
    worker.bar = bar  # used when the executor runs jobs in this process
    worker._context(registry=registry, config=config, tracker=tracker, datasets=datasets, scorers=scorers)
    if len(todo) < len(specs):
        bar.message(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; skipping them")
    jobs = [RunJob(spec, parent_run_id, reuse.get(spec.run_key), i + 1, len(todo)) for i, spec in enumerate(todo)]
    try:
        for outcome in executor_obj.run(jobs, worker):
            outcomes_by_key[outcome.spec.run_key] = outcome
            if not getattr(executor_obj, "in_process", False):
                bar.message(f"[{len(outcomes_by_key)}/{len(specs)}] {outcome.status} {outcome.spec.run_name}")
    except KeyboardInterrupt:
        tracker.end_run(parent_run_id, tracking.KILLED)
        bar.close()
        raise
    bar.close()
    missing = [s for s in specs if s.run_key not in outcomes_by_key]
    for spec in missing:  # an executor that lost a job (a crashed worker process)
        outcomes_by_key[spec.run_key] = RunOutcome(spec, "failed", error="the executor returned no result")
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


def _train_and_evaluate(spec: RunSpec, ctx: dict[str, Any], run_id: str, bar: StudyProgress, checkpoint: Path) -> dict[str, float]:
    registry, config, tracker, device = ctx["registry"], ctx["config"], ctx["tracker"], ctx["device"]
    data = ctx["datasets"].get(spec.dataset, spec.dataset_params)
    scorers = ctx["scorers"]
    model_reg = registry.get("model", spec.model)
    model = build_model(model_reg.factory, model_reg.make_config(spec.model_params), data.observation_shape, spec.seed, device)
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
    tracker.log_metrics(
        run_id,
        {"train/seconds": result.seconds, "train/model_steps_per_second": result.steps / max(result.seconds, 1e-9)},
    )

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
        traversals = images.traversal_images(model, data, device)  # decoded once: PNG grid and GIF
        images.save_png(images.traversal_grid_from(traversals), tmp / "traversals.png")
        images.save_traversal_gif(traversals, tmp / "traversals.gif")
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
