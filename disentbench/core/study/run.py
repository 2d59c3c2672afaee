"""Run a study: validated config -> grid -> executor -> train, evaluate, record in MLflow.

Nothing is written to the tracking store before the whole config has been
validated. Re-running a study skips every run key that already finished; an
unfinished run of the same key is reused (not duplicated) and resumes from its
local checkpoint.

Packed training (``training.pack_size``): executors that support it hand the
worker groups of jobs (:func:`~disentbench.core.study.jobs.group_into_packs`: same
:func:`~disentbench.core.study.jobs.pack_key`, i.e.
runs differing only in numeric swept hyperparameters and seed) and
:meth:`Worker.run_pack` trains each group with one
:class:`~disentbench.core.training.packed.trainer.PackedTrainer`; everything around training
(locks, claims, evaluation, artifacts, failures) is per run, as for a run
trained alone.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from disentbench.core.display import images
from disentbench.core.tracking import tracker as tracking
from disentbench.core.config.schema import StudyConfig
from disentbench.core.evaluation.evaluate import evaluate, score_prefix
from disentbench.core.config.grid import RunSpec, canonical_json, expand_grid, stable_hash
from disentbench.core.study.jobs import RunJob, RunOutcome, StudyResult, group_into_packs, pack_key
from disentbench.core.study.locks import lock_and_claim
from disentbench.core.messages import first_line
from disentbench.core.paths import check_data_root
from disentbench.core.registry import PluginRegistry, get_plugin_manager
from disentbench.core.display.progress import StudyProgress
from disentbench.core.training.trainer import DeviceUnavailable, Trainer, TrainResult, build_model, resolve_device


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

    def for_training(self, name: str, params: dict[str, Any]):
        """``get``, and free the device copies of every other dataset: one dataset's images on the device at a time.

        A study's runs come dataset by dataset, and ``choose_pack_size`` budgets for one dataset's images.
        """
        data = self.get(name, params)
        for other in self._cache.values():
            if other is not data:
                other.release_device_images()
        return data


def _device_bytes_to_come(data, device: torch.device) -> int:
    """Bytes ``data.device_images(device)`` will add to the device: 0 once they are there."""
    return 0 if data.holds_device_images(device) else int(data.images.nbytes)


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
        # The share of a GPU's free memory auto packs may use (the multiprocess executor
        # lowers it when several worker processes share one device).
        self.memory_share = 1.0
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
            from disentbench.core.config.schema import StudyConfig

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
                "pack_sizes": {},  # auto pack size per (model, params, dataset, batch size)
                "architectures": {},  # parameter-shape signature per (model, params, dataset)
            }
        return self._state

    # -- packing ------------------------------------------------------------------------
    @property
    def pack_size(self) -> int | str:
        """The configured ``training.pack_size`` (an int, or "auto")."""
        return self.config_data["training"]["pack_size"]

    def may_pack(self, devices: list[str] | None = None) -> bool:
        """Whether ``training.pack_size`` can pack runs on ``devices`` (default this worker's device).

        Cheap (builds nothing): an integer above 1 packs anywhere; auto packs on CUDA only.
        """
        setting = self.pack_size
        if setting == "auto":
            return any(_is_cuda(d) for d in (devices or [self.device]))
        return setting > 1

    def pack_key(self, job: RunJob) -> str:
        """Jobs with equal keys can share a pack: :func:`pack_key` of the spec plus the parameter shapes."""
        ctx = self._context()
        spec = job.spec
        key = pack_key(spec)
        cache = ctx["architectures"]
        shapes_key = canonical_json([spec.model, spec.model_params, spec.dataset, spec.dataset_params])
        if shapes_key not in cache:
            cache[shapes_key] = _parameter_shapes(spec, ctx)
        return key + "|" + cache[shapes_key]

    def pack_size_for(self, job: RunJob) -> int:
        """The largest pack ``job`` may join: ``training.pack_size``, or for auto what fits (1 off CUDA)."""
        ctx = self._context()
        setting = ctx["config"].training.pack_size
        if setting != "auto":
            return setting
        device = ctx["device"]
        if device.type != "cuda":
            return 1
        spec = job.spec
        # Once per group of runs that may share a pack (not per swept value: they have the same shapes).
        key = self.pack_key(job)
        sizes = ctx["pack_sizes"]
        if key not in sizes:
            from disentbench.core.training.packed.trainer import choose_pack_size

            registration = ctx["registry"].get("model", spec.model)
            data = ctx["datasets"].get(spec.dataset, spec.dataset_params)
            model_config = registration.make_config(spec.model_params)
            bar = self.bar or StudyProgress(1, enabled=False)
            try:
                sizes[key] = choose_pack_size(
                    lambda: build_model(registration.factory, model_config, data.observation_shape, 0, device),
                    device,
                    spec.batch_size,
                    free_memory_fraction=0.8 * self.memory_share,
                    speed=_speed_options(ctx["config"]),
                    observation_shape=tuple(data.observation_shape),
                    reserved_bytes=_device_bytes_to_come(data, device),
                )
            except Exception as exc:  # unpackable model, or the probe itself failed: train these runs alone
                bar.message(f"{spec.model} runs on {spec.dataset} are trained one by one ({type(exc).__name__}: {exc})")
                sizes[key] = 1
            else:
                bar.message(f"{spec.model} runs on {spec.dataset}: up to {sizes[key]} per pack on {device}")
        return sizes[key]

    def run_packed(self, jobs: list[RunJob]) -> Iterator[RunOutcome]:
        """Every job, in packs of :func:`group_into_packs` (a pack of one is trained alone)."""
        for pack in group_into_packs(jobs, self.pack_size_for, key=self.pack_key):
            if len(pack) == 1:
                yield self(pack[0])
            else:
                yield from self.run_pack(pack)

    # -- one run -------------------------------------------------------------------------
    def __call__(self, job: RunJob) -> RunOutcome:
        ctx = self._context()
        started = time.perf_counter()
        with lock_and_claim(job, ctx["config"], ctx["tracker"]) as claim:
            if claim.skipped is not None:
                return claim.skipped
            return self._run_claimed(job, claim.run_id, started)

    def _run_claimed(self, job: RunJob, run_id: str, started: float) -> RunOutcome:
        """Train, evaluate and record one claimed run alone (its lock held by the caller)."""
        ctx = self._context()
        tracker, spec = ctx["tracker"], job.spec
        bar = self.bar or StudyProgress(spec.steps, enabled=False)
        checkpoint = Path(ctx["config"].training.checkpoint_dir) / spec.run_key / "checkpoint.pt"
        bar.start_run(f"[{job.position}/{job.total}] {spec.run_name}")
        try:
            scores = _train_and_evaluate(spec, ctx, run_id, bar, checkpoint)
        except KeyboardInterrupt:
            tracker.end_run(run_id, tracking.KILLED)
            raise
        except Exception as exc:
            return _record_failure(ctx, bar, spec, run_id, exc, traceback.format_exc(), started)
        tracker.end_run(run_id, tracking.FINISHED)
        return RunOutcome(spec, "finished", run_id, scores, seconds=time.perf_counter() - started)

    # -- one pack ------------------------------------------------------------------------
    def run_pack(self, jobs: list[RunJob]) -> list[RunOutcome]:
        """Train ``jobs`` (one :func:`pack_key`) as one pack; outcomes in the order of ``jobs``.

        Per job exactly what :meth:`__call__` does around training: the run-key
        lock (skipped if held), the MLflow claim (skipped if another invocation
        owns the run); then every claimed run is trained by one
        :class:`~disentbench.core.training.packed.trainer.PackedTrainer` and evaluated and recorded
        on its own. A run whose loss turns non-finite, or whose evaluation fails,
        fails alone. If the runs cannot be packed (``UnpackableModel``), or the
        batched computation raises, the runs are trained one by one instead,
        each resuming from its checkpoint (Trainer's format either way).
        """
        ctx = self._context()
        tracker = ctx["tracker"]
        outcomes: dict[int, RunOutcome] = {}
        claimed: list[tuple[int, RunJob, str]] = []
        started = time.perf_counter()
        with contextlib.ExitStack() as locks:
            try:
                for k, job in enumerate(jobs):
                    claim = locks.enter_context(lock_and_claim(job, ctx["config"], tracker))
                    if claim.skipped is not None:
                        outcomes[k] = claim.skipped
                        continue
                    claimed.append((k, job, claim.run_id))
                if len(claimed) == 1:
                    k, job, run_id = claimed[0]
                    outcomes[k] = self._run_claimed(job, run_id, started)
                elif claimed:
                    self._train_pack(claimed, started, outcomes)
            except KeyboardInterrupt:
                for k, _, run_id in claimed:
                    if k not in outcomes:
                        tracker.end_run(run_id, tracking.KILLED)
                raise
        return [outcomes[k] for k in range(len(jobs))]

    def _train_pack(
        self, claimed: list[tuple[int, RunJob, str]], started: float, outcomes: dict[int, RunOutcome]
    ) -> None:
        """Train the claimed runs as one pack, then evaluate each; fills ``outcomes`` as runs end."""
        from disentbench.core.training.packed.trainer import PackedTrainer, UnpackableModel

        ctx = self._context()
        registry, config, tracker, device = ctx["registry"], ctx["config"], ctx["tracker"], ctx["device"]
        first = claimed[0][1].spec
        data = ctx["datasets"].for_training(first.dataset, first.dataset_params)
        bar = self.bar or StudyProgress(sum(job.spec.steps for _, job, _ in claimed), enabled=False)

        def solo(reason: str) -> None:
            bar.message(f"{reason}; training these {len(members)} runs one by one")
            for k, job, run_id in members:
                outcomes[k] = self._run_claimed(job, run_id, started)

        members, models = [], []
        for k, job, run_id in claimed:
            spec = job.spec
            try:
                registration = registry.get("model", spec.model)
                model_config = registration.make_config(spec.model_params)
                model = build_model(registration.factory, model_config, data.observation_shape, spec.seed, device)
            except Exception as exc:
                outcomes[k] = _record_failure(ctx, bar, spec, run_id, exc, traceback.format_exc(), started)
                continue
            members.append((k, job, run_id))
            models.append(model)
        if len(members) < 2:
            for k, job, run_id in members:
                outcomes[k] = self._run_claimed(job, run_id, started)
            return
        specs = [job.spec for _, job, _ in members]
        try:
            trainer = PackedTrainer(
                models=models,
                data=data,
                seeds=[spec.seed for spec in specs],
                steps=first.steps,
                batch_size=first.batch_size,
                device=device,
                log_every=config.training.log_every,
                checkpoint_every=config.training.checkpoint_every,
                checkpoint_paths=[Path(config.training.checkpoint_dir) / s.run_key / "checkpoint.pt" for s in specs],
                speed=_speed_options(config),
            )
        except UnpackableModel as exc:
            return solo(f"cannot pack {first.model} runs ({exc})")
        except Exception as exc:  # building the pack failed (its dry run of the loss, out of memory): alone
            models = None  # free the built models before the solo runs build their own
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return solo(f"cannot pack {first.model} runs ({type(exc).__name__}: {first_line(exc)})")
        del models  # the trainer holds them
        run_ids = [run_id for _, _, run_id in members]
        positions = ",".join(str(job.position) for _, job, _ in members)
        bar.start_run(f"[{positions}/{members[0][1].total}] pack of {len(members)}: {first.model} on {first.dataset}")
        reached = [0] * len(members)

        def on_log(i: int, step: int, terms: dict[str, float]) -> None:
            tracker.log_metrics(run_ids[i], {f"train/{k}": v for k, v in terms.items()}, step)

        def on_progress(i: int, step: int) -> None:
            reached[i] = step
            bar.update_run(sum(reached))

        packed = None
        try:
            packed = trainer.train(on_log=on_log, on_progress=on_progress)
        except Exception as exc:  # the batched computation itself failed: no run's checkpoint is harmed
            reason = f"packed training failed ({type(exc).__name__}: {exc})"
        if packed is None:
            trainer = None  # free the pack (e.g. after running out of GPU memory) before training alone
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return solo(reason)
        bar.finish_run(sum(spec.steps for spec in specs))
        for run_id in run_ids:
            tracker.set_tags(run_id, {"pack_size": str(len(members))})
        for i, (k, job, run_id) in enumerate(members):
            spec, error, result = job.spec, packed.errors[i], packed.results[i]
            if error is None and result is None:
                error = RuntimeError("the packed trainer returned neither a result nor an error")
            if error is not None:
                trace = "".join(traceback.format_exception(error))
                outcomes[k] = _record_failure(ctx, bar, spec, run_id, error, trace, started)
                continue
            try:
                scores = _evaluate_and_record(spec, ctx, run_id, trainer.trainers[i].model, result)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                outcomes[k] = _record_failure(ctx, bar, spec, run_id, exc, traceback.format_exc(), started)
                continue
            tracker.end_run(run_id, tracking.FINISHED)
            outcomes[k] = RunOutcome(spec, "finished", run_id, scores, seconds=time.perf_counter() - started)


def _is_cuda(device: str) -> bool:
    try:
        return resolve_device(device).type == "cuda"
    except RuntimeError:
        return False


def _speed_options(config: StudyConfig):
    from disentbench.core.training.packed.trainer import SpeedOptions

    return SpeedOptions(
        channels_last=config.training.channels_last,
        autocast_bf16=config.training.bf16,
        cuda_graphs=config.training.cuda_graphs,
        formulation=config.training.formulation,
        compile=config.training.compile,
        overlap_sampling=config.training.overlap_sampling,
        triton_tuning=config.training.triton_tuning,
    )


def _parameter_shapes(spec: RunSpec, ctx: dict[str, Any]) -> str:
    """A hash of the model's parameter names and shapes, built on the meta device (no memory, no init).

    Runs whose swept numbers change the architecture (``num_latent``) get different keys. A model
    that cannot be built there gets an empty signature: if its runs cannot share a pack after all,
    the pack trains them one by one.
    """
    registration = ctx["registry"].get("model", spec.model)
    data = ctx["datasets"].get(spec.dataset, spec.dataset_params)
    try:
        with torch.device("meta"):
            model = registration.factory(registration.make_config(spec.model_params), tuple(data.observation_shape))
        shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    except Exception:
        return ""
    return stable_hash(shapes)


def _record_failure(
    ctx: dict[str, Any], bar: StudyProgress, spec: RunSpec, run_id: str, exc: BaseException, trace: str, started: float
) -> RunOutcome:
    """Mark a claimed run FAILED: an ``error`` tag, the traceback as error.txt; other runs are not touched."""
    tracker = ctx["tracker"]
    message = f"{type(exc).__name__}: {exc}"
    tracker.set_tags(run_id, {"error": message[:5000]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "error.txt"
        path.write_text(trace)
        tracker.log_artifact(run_id, path)
    tracker.end_run(run_id, tracking.FAILED)
    bar.message(f"run {spec.run_name} failed: {message}")
    return RunOutcome(spec, "failed", run_id, error=message, seconds=time.perf_counter() - started)


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
    # Fail on an impossible device, data root or SQLite store before writing anything
    # (MLflow would retry an unusable store for minutes; the checkpoint folder comes first).
    try:
        resolve_device(device or config.training.device)
    except DeviceUnavailable as exc:
        raise DeviceUnavailable(str(exc) if device else f"training.device: {exc}") from None
    device = device or config.training.device
    check_data_root()
    tracking.check_sqlite_uri(tracking.resolve_tracking_uri(tracking_uri or config.tracking.uri))

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
    finished_runs = {}
    for spec in specs:
        runs = recorded.get(spec.run_key, [])
        if tracking.status_of(runs) == tracking.FINISHED:
            finished = next(r for r in runs if r.info.status == tracking.FINISHED)
            finished_runs[spec.run_key] = finished
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
        _score_finished_runs(
            [(spec, finished_runs[spec.run_key]) for spec in specs if spec.run_key in finished_runs],
            worker._context(), outcomes_by_key, bar,
        )
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
            prefix = score_prefix(kind, representation, name)
            headline = getattr(scorer, "headline", None)
            names = [prefix + k for k in headline] if headline else sorted(k for k in recorded if k.startswith(prefix))
            keys.extend(k for k in names if k in recorded)
    return keys


def _unscored(config: StudyConfig, scorers, metrics: dict[str, float]) -> dict[str, list]:
    """Per representation, the scorers that left no score in ``metrics`` (added after the run finished)."""
    missing: dict[str, list] = {}
    for representation in config.evaluation.representations:
        for kind, name, scorer in scorers:
            prefix = score_prefix(kind, representation, name)
            if not any(key.startswith(prefix) for key in metrics):
                missing.setdefault(representation, []).append((kind, name, scorer))
    return missing


def _score_finished_runs(finished: list, ctx: dict[str, Any], outcomes: dict, bar: StudyProgress) -> None:
    """Score finished runs with the metrics and tasks the config gained since they finished.

    The model comes from the run's ``checkpoints/model.pt`` artifact; the new
    scores equal those a full evaluation would have given (each metric's draws
    depend only on the evaluation seed and its name). In this process, after
    the executor's jobs.
    """
    config, tracker = ctx["config"], ctx["tracker"]
    todo = [(spec, run, _unscored(config, ctx["scorers"], run.data.metrics)) for spec, run in finished]
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
        merged = {**_scores_of(run.data.metrics), **scores}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scores.json"
            path.write_text(json.dumps(merged, indent=2, sort_keys=True))
            tracker.log_artifact(run_id, path)
        outcomes[spec.run_key] = RunOutcome(spec, "skipped", run_id, merged)


def _score_checkpoint(spec: RunSpec, ctx: dict[str, Any], run_id: str, missing: dict[str, list]) -> dict[str, float]:
    """Load a finished run's model artifact, score it with ``missing`` (per representation), log the scores."""
    config, tracker, device, registry = ctx["config"], ctx["tracker"], ctx["device"], ctx["registry"]
    data = ctx["datasets"].get(spec.dataset, spec.dataset_params)
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
            )  # fmt: skip
        )
    tracker.log_metrics(run_id, scores, step=spec.steps)
    return scores


def _scores_of(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("eval/", "downstream/"))}


def _train_and_evaluate(spec: RunSpec, ctx: dict[str, Any], run_id: str, bar: StudyProgress, checkpoint: Path) -> dict[str, float]:
    model, result = _train(spec, ctx, run_id, bar, checkpoint)
    return _evaluate_and_record(spec, ctx, run_id, model, result)


def _train(spec: RunSpec, ctx: dict[str, Any], run_id: str, bar: StudyProgress, checkpoint: Path):
    """One run trained alone by the solo Trainer; returns (trained model, TrainResult)."""
    registry, config, tracker, device = ctx["registry"], ctx["config"], ctx["tracker"], ctx["device"]
    data = ctx["datasets"].for_training(spec.dataset, spec.dataset_params)
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
    return trainer.model, result


def _evaluate_and_record(
    spec: RunSpec, ctx: dict[str, Any], run_id: str, model, result: TrainResult
) -> dict[str, float]:
    """After training (solo or packed): timing metrics, scores and artifacts of one run; returns its scores."""
    config, tracker, device = ctx["config"], ctx["tracker"], ctx["device"]
    data = ctx["datasets"].get(spec.dataset, spec.dataset_params)
    scorers = ctx["scorers"]
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
