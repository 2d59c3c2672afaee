"""The worker: what an executor calls to train, evaluate and record runs, alone or in packs.

Executors decide where and in what order runs execute; the worker decides how
one run, or one pack of runs, is executed there: lock and claim, training
(solo :class:`~disentbench.core.training.trainer.Trainer` or packed
:class:`~disentbench.core.training.packed.trainer.PackedTrainer`), evaluation,
recording, and the fall-backs when packing is impossible. It travels to other
processes as plain data and rebuilds its :class:`StudyContext` there, so this
is the only room an executor's process needs beyond :mod:`~disentbench.core.study.jobs`.

Cluster executors split a run's work in two tasks: :meth:`Worker.train_task`
(on a GPU) trains a group of jobs in packs and hands each trained run back as a
``"trained"`` outcome, its final checkpoint written and its MLflow run still
RUNNING (tag ``disentbench.stage=trained``); :meth:`Worker.evaluate_trained`
(on CPUs) loads that checkpoint, evaluates, records and finishes the run. Both
first :meth:`~Worker.refresh` their jobs from the tracking store, so a retried
or requeued task takes over the runs its dead attempt created instead of
creating new ones, and skips the runs that attempt finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from disentbench.core.config.grid import RunSpec, canonical_json
from disentbench.core.config.schema import StudyConfig
from disentbench.core.contracts import Model
from disentbench.core.display.progress import StudyProgress
from disentbench.core.messages import first_line
from disentbench.core.study.context import StudyContext, build_context
from disentbench.core.study.jobs import RunJob, RunOutcome, group_into_packs, pack_key
from disentbench.core.study.locks import LeaseLost, RunRef, lock_and_claim
from disentbench.core.study.packing import is_cuda, measure_pack_size, parameter_shapes, speed_options
from disentbench.core.study.recording import (
    curve_logged_through,
    evaluate_and_record,
    fresh_run_for_restart,
    record_failure,
    record_training,
    scores_of,
)
from disentbench.core.tracking import tracker as tracking
from disentbench.core.training.trainer import Trainer, build_model


class Worker:
    """Trains, evaluates and records RunJobs.

    Picklable: only the validated config (as data), the tracking URI and the
    device travel; the plugin registry, datasets, scorers and MLflow client are
    rebuilt lazily in whichever process calls it, and reused across its jobs.

    Executors call ``worker(job)`` for one run, or :meth:`run_in_packs` for a
    list of jobs it groups into packs itself (when :meth:`may_pack`).
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
        # Cluster training tasks stop after training: trained runs come back "trained", evaluated by another task.
        self.evaluate_separately = False
        self._state: StudyContext | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["bar"] = None
        state["_state"] = None
        return state

    def with_device(self, device: str) -> Worker:
        clone = Worker.__new__(Worker)
        clone.__dict__.update(self.__getstate__())
        clone.device = device
        return clone

    def training_only(self) -> Worker:
        """This worker (same process state and progress bar) stopping after training: trained runs come
        back ``"trained"``, their leases released, for :meth:`evaluate_trained` elsewhere."""
        clone = Worker.__new__(Worker)
        clone.__dict__.update(self.__dict__)
        clone.evaluate_separately = True
        return clone

    def _context(self, **prebuilt: Any) -> StudyContext:
        """The per-process state, built on first use; ``prebuilt`` parts (the parent's own
        registry, tracker, datasets...) are adopted instead of being built again."""
        if self._state is None:
            self._state = build_context(self.config_data, self.tracking_uri, self.experiment_id, self.device, **prebuilt)
        return self._state

    # -- packing ------------------------------------------------------------------------
    @property
    def pack_size(self) -> int | Literal["auto"]:
        """The configured ``training.pack_size`` (an int, or "auto")."""
        return self.config_data["training"]["pack_size"]

    def may_pack(self, devices: list[str] | None = None) -> bool:
        """Whether ``training.pack_size`` can pack runs on ``devices`` (default this worker's device).

        Cheap (builds nothing): an integer above 1 packs anywhere; auto packs on CUDA only.
        """
        setting = self.pack_size
        if setting == "auto":
            return any(is_cuda(d) for d in (devices or [self.device]))
        return setting > 1

    def pack_key(self, job: RunJob) -> str:
        """Jobs with equal keys can share a pack: :func:`pack_key` of the spec plus the parameter shapes."""
        ctx = self._context()
        spec = job.spec
        key = pack_key(spec)
        cache = ctx.architectures
        shapes_key = canonical_json([spec.model, spec.model_params, spec.dataset, spec.dataset_params])
        if shapes_key not in cache:
            cache[shapes_key] = parameter_shapes(spec, ctx)
        return key + "|" + cache[shapes_key]

    def pack_size_for(self, job: RunJob) -> int:
        """The largest pack ``job`` may join: ``training.pack_size``, or for auto what fits (1 off CUDA)."""
        ctx = self._context()
        setting = ctx.config.training.pack_size
        if setting != "auto":
            return setting
        if ctx.device.type != "cuda":
            return 1
        # Once per group of runs that may share a pack (not per swept value: they have the same shapes).
        key = self.pack_key(job)
        sizes = ctx.pack_sizes
        if key not in sizes:
            bar = self.bar or StudyProgress(1, enabled=False)
            sizes[key] = measure_pack_size(job.spec, ctx, self.memory_share, bar)
        return sizes[key]

    def run_in_packs(self, jobs: list[RunJob]) -> Iterator[RunOutcome]:
        """Every job, grouped by :func:`group_into_packs` and each pack run by :meth:`run_one_pack`
        (a pack of one is trained alone)."""
        for pack in group_into_packs(jobs, self.pack_size_for, key=self.pack_key):
            if len(pack) == 1:
                yield self(pack[0])
            else:
                yield from self.run_one_pack(pack)

    # -- one run -------------------------------------------------------------------------
    def __call__(self, job: RunJob) -> RunOutcome:
        ctx = self._context()
        started = time.perf_counter()
        with lock_and_claim(job, ctx.config, ctx.tracker) as claim:
            if claim.skipped is not None:
                return claim.skipped
            if claim.run_id is None:  # a claim is either skipped or has a run id
                raise RuntimeError("a claim with neither a run id nor a skipped outcome")
            return self._run_claimed(job, claim.ref(), started)

    def _run_claimed(self, job: RunJob, ref: RunRef, started: float) -> RunOutcome:
        """Train, evaluate and record one claimed run alone (its lock and lease held by the caller).

        A run whose lease another owner took meanwhile (this process stalled
        past it) stops at its next curve point and records nothing more.
        """
        ctx = self._context()
        tracker, spec = ctx.tracker, job.spec
        bar = self.bar or StudyProgress(spec.steps, enabled=False)
        checkpoint = Path(ctx.config.training.checkpoint_dir) / spec.run_key / "checkpoint.pt"
        bar.start_run(f"[{job.position}/{job.total}] {spec.run_name}")
        try:
            if self.evaluate_separately:
                _, result = _train(spec, ctx, ref, bar, checkpoint)
                ref.check()
                return self._trained(spec, ref.run_id, result, started)
            scores = _train_and_evaluate(spec, ctx, ref, bar, checkpoint)
            ref.check()
        except LeaseLost:
            return _lost(spec, ref, started)
        except KeyboardInterrupt:
            tracker.end_run(ref.run_id, tracking.KILLED)
            raise
        except Exception as exc:
            if ref.lost:
                return _lost(spec, ref, started)
            return record_failure(ctx, bar, spec, ref.run_id, exc, traceback.format_exc(), started)
        tracker.end_run(ref.run_id, tracking.FINISHED)
        return RunOutcome(spec, "finished", ref.run_id, scores, seconds=time.perf_counter() - started)

    # -- one pack ------------------------------------------------------------------------
    def run_one_pack(self, jobs: list[RunJob]) -> list[RunOutcome]:
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
        tracker = ctx.tracker
        outcomes: dict[int, RunOutcome] = {}
        claimed: list[tuple[int, RunJob, RunRef]] = []
        started = time.perf_counter()
        with contextlib.ExitStack() as locks:
            try:
                for k, job in enumerate(jobs):
                    claim = locks.enter_context(lock_and_claim(job, ctx.config, tracker))
                    if claim.skipped is not None:
                        outcomes[k] = claim.skipped
                        continue
                    if claim.run_id is None:  # a claim is either skipped or has a run id
                        raise RuntimeError("a claim with neither a run id nor a skipped outcome")
                    claimed.append((k, job, claim.ref()))
                if len(claimed) == 1:
                    k, job, ref = claimed[0]
                    outcomes[k] = self._run_claimed(job, ref, started)
                elif claimed:
                    self._train_pack(claimed, started, outcomes)
            except KeyboardInterrupt:
                for k, _, ref in claimed:
                    if k not in outcomes:
                        tracker.end_run(ref.run_id, tracking.KILLED)
                raise
        return [outcomes[k] for k in range(len(jobs))]

    def _train_pack(
        self, claimed: list[tuple[int, RunJob, RunRef]], started: float, outcomes: dict[int, RunOutcome]
    ) -> None:
        """Train the claimed runs as one pack, then evaluate each; fills ``outcomes`` as runs end."""
        from disentbench.core.training.packed.trainer import PackedTrainer, UnpackableModel

        ctx = self._context()
        registry, config, tracker, device = ctx.registry, ctx.config, ctx.tracker, ctx.device
        first = claimed[0][1].spec
        data = ctx.datasets.for_training(first.dataset, first.dataset_params)
        bar = self.bar or StudyProgress(sum(job.spec.steps for _, job, _ in claimed), enabled=False)

        def solo(reason: str) -> None:
            bar.message(f"{reason}; training these {len(members)} runs one by one")
            for k, job, ref in members:
                outcomes[k] = self._run_claimed(job, ref, started)

        members: list[tuple[int, RunJob, RunRef]] = []
        models: list[Model] = []
        for k, job, ref in claimed:
            spec = job.spec
            try:
                registration = registry.get("model", spec.model)
                model_config = registration.make_config(spec.model_params)
                model = build_model(registration.factory, model_config, data.observation_shape, spec.seed, device)
            except Exception as exc:
                outcomes[k] = record_failure(ctx, bar, spec, ref.run_id, exc, traceback.format_exc(), started)
                continue
            members.append((k, job, ref))
            models.append(model)
        if len(members) < 2:
            for k, job, ref in members:
                outcomes[k] = self._run_claimed(job, ref, started)
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
                speed=speed_options(config),
            )
        except UnpackableModel as exc:
            return solo(f"cannot pack {first.model} runs ({exc})")
        except Exception as exc:  # building the pack failed (its dry run of the loss, out of memory): alone
            del models  # free the built models before the solo runs build their own
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return solo(f"cannot pack {first.model} runs ({type(exc).__name__}: {first_line(exc)})")
        del models  # the trainer holds them
        logged = []  # each run's last curve step already in MLflow (a resume recomputes the points after it)
        for i, (_, _, ref) in enumerate(members):  # resume each run now: one restarting from 0 gets a fresh run
            resumed = trainer.trainers[i].maybe_resume()
            fresh_run_for_restart(tracker, ref, resumed)
            logged.append(curve_logged_through(tracker, ref.run_id, resumed))
        run_ids = [ref.run_id for _, _, ref in members]
        positions = ",".join(str(job.position) for _, job, _ in members)
        bar.start_run(f"[{positions}/{members[0][1].total}] pack of {len(members)}: {first.model} on {first.dataset}")
        reached = [0] * len(members)

        def on_log(i: int, step: int, terms: dict[str, float]) -> None:
            if step > logged[i]:
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
            del trainer  # free the pack (e.g. after running out of GPU memory) before training alone
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return solo(reason)
        bar.finish_run(sum(spec.steps for spec in specs))
        for run_id in run_ids:
            tracker.set_tags(run_id, {"pack_size": str(len(members))})
        for i, (k, job, ref) in enumerate(members):
            run_id = ref.run_id
            spec, error, result = job.spec, packed.errors[i], packed.results[i]
            if ref.lost:
                outcomes[k] = _lost(spec, ref, started)
                continue
            if error is None and result is None:
                error = RuntimeError("the packed trainer returned neither a result nor an error")
            if error is not None:
                trace = "".join(traceback.format_exception(error))
                outcomes[k] = record_failure(ctx, bar, spec, run_id, error, trace, started)
                continue
            if result is None:  # no error means a result (checked just above)
                raise RuntimeError("the packed trainer returned neither a result nor an error")
            if self.evaluate_separately:
                outcomes[k] = self._trained(spec, run_id, result, started)
                continue
            try:
                scores = evaluate_and_record(spec, ctx, run_id, trainer.trainers[i].model, result, bar)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                outcomes[k] = record_failure(ctx, bar, spec, run_id, exc, traceback.format_exc(), started)
                continue
            tracker.end_run(run_id, tracking.FINISHED)
            outcomes[k] = RunOutcome(spec, "finished", run_id, scores, seconds=time.perf_counter() - started)

    # -- cluster tasks: training and evaluation apart ------------------------------------
    def _trained(self, spec: RunSpec, run_id: str, result, started: float) -> RunOutcome:
        """A run trained by a cluster training task: timing recorded, final checkpoint on disk, run RUNNING."""
        ctx = self._context()
        record_training(ctx, run_id, result)
        ctx.tracker.set_tags(run_id, {STAGE_TAG: "trained"})
        ctx.tracker.release_lease(run_id)  # its evaluation task (another process or node) claims it at once
        return RunOutcome(spec, "trained", run_id, seconds=time.perf_counter() - started)

    def refresh(self, job: RunJob) -> tuple[RunJob, RunOutcome | None]:
        """``job`` as the tracking store has it now, for a task that may be a retry of a dead one.

        A FINISHED run of its key: the outcome to report instead of any work. A run of this
        invocation (same parent run) that an earlier attempt of the task created: the job reuses it
        (never a second MLflow run), or if that attempt recorded it FAILED, its failure is reported;
        if the dead attempt's lease is still alive (it ran on a lost node), its lapse is awaited.
        """
        ctx = self._context()
        spec = job.spec
        runs = ctx.tracker.runs_of_key(spec.run_key)  # active ones, canonical (oldest) first
        for run in runs:
            if run.info.status == tracking.FINISHED:
                return job, RunOutcome(spec, "skipped", run.info.run_id, scores_of(run.data.metrics))
        ours = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == job.parent_run_id]
        if job.reuse_run_id is None and ours:
            run = ours[0]
            if run.info.status == tracking.FAILED:
                error = run.data.tags.get("error", "failed in an earlier attempt of this task")
                return job, RunOutcome(spec, "failed", run.info.run_id, error=error)
            job = dataclasses.replace(job, reuse_run_id=run.info.run_id)
        parent = job.parent_run_id
        mine = [r for r in runs if r.info.run_id == job.reuse_run_id and r.data.tags.get(tracking.PARENT_TAG) == parent]
        if mine:
            self._outlive_dead_attempt(mine[0])
        return job, None

    def _outlive_dead_attempt(self, run) -> None:
        """Wait (at most twice its duration) for the live lease of another owner on ``run``, a run of this
        invocation, to lapse: the earlier attempt of this task that holds it died (the cluster retries a task
        only then) on another node, where its pid cannot be checked. A dead process on this host has no live
        lease (its pid is gone), so this waits only for a retry on another node than the lost one."""
        tracker = self._context().tracker
        lease = tracking.live_lease(run)
        if lease is None or lease.owner == tracking.this_owner().id:
            return
        deadline = time.monotonic() + 2 * lease.seconds
        while time.monotonic() < deadline:
            time.sleep(max(0.2, min(5.0, lease.seconds / 4)))
            lease = tracking.live_lease(tracker.client.get_run(run.info.run_id))
            if lease is None or lease.owner == tracking.this_owner().id:
                return

    def train_task(self, jobs: list[RunJob]) -> list[RunOutcome]:
        """A cluster training task: ``jobs`` refreshed, then trained in packs sized on this device as
        locally (:meth:`run_in_packs`); outcomes in the order of ``jobs``, trained runs as ``"trained"``
        when :attr:`evaluate_separately` is set."""
        outcomes: dict[str, RunOutcome] = {}
        todo: list[RunJob] = []
        for job in jobs:
            job, done = self.refresh(job)
            if done is not None:
                outcomes[job.spec.run_key] = done
            else:
                todo.append(job)
        results = self.run_in_packs(todo) if self.may_pack() else (self(job) for job in todo)
        for outcome in results:  # a "trained" run's lease is released already (_trained)
            outcomes[outcome.spec.run_key] = outcome
        return [outcomes[job.spec.run_key] for job in jobs]

    def evaluate_trained(self, job: RunJob) -> RunOutcome:
        """A cluster evaluation task: the run ``job.reuse_run_id``, trained by a training task, is loaded
        from its final checkpoint on this worker's device, evaluated, recorded and FINISHED."""
        ctx = self._context()
        job, done = self.refresh(job)
        if done is not None:
            return done
        started = time.perf_counter()
        spec, tracker = job.spec, ctx.tracker
        bar = self.bar or StudyProgress(1, enabled=False)
        with lock_and_claim(job, ctx.config, tracker) as claim:
            if claim.skipped is not None:
                return claim.skipped
            run_id = claim.run_id
            if run_id is None:  # a claim is either skipped or has a run id
                raise RuntimeError("a claim with neither a run id nor a skipped outcome")
            try:
                tracker.set_tags(run_id, {STAGE_TAG: "evaluating"})
                model = self._trained_model(spec, run_id)
                scores = evaluate_and_record(spec, ctx, run_id, model, None)
            except KeyboardInterrupt:
                tracker.end_run(run_id, tracking.KILLED)
                raise
            except Exception as exc:
                return record_failure(ctx, bar, spec, run_id, exc, traceback.format_exc(), started)
            tracker.set_tags(run_id, {STAGE_TAG: "evaluated"})
            tracker.end_run(run_id, tracking.FINISHED)
            return RunOutcome(spec, "finished", run_id, scores, seconds=time.perf_counter() - started)

    def _trained_model(self, spec: RunSpec, run_id: str) -> Model:
        """The run's model from its final checkpoint, in the memory format the local path evaluates it in."""
        ctx = self._context()
        path = Path(ctx.config.training.checkpoint_dir) / spec.run_key / "checkpoint.pt"
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint {path}: is training.checkpoint_dir on a filesystem all nodes see?")
        state = torch.load(path, map_location=ctx.device, weights_only=True)
        if int(state["step"]) != spec.steps:
            raise RuntimeError(f"checkpoint {path} is at step {state['step']} of {spec.steps}; re-run to train it")
        registration = ctx.registry.get("model", spec.model)
        data = ctx.datasets.get(spec.dataset, spec.dataset_params)
        model = build_model(
            registration.factory, registration.make_config(spec.model_params), data.observation_shape, spec.seed, ctx.device
        )
        model.load_state_dict(state["model"])
        packed = ctx.tracker.client.get_run(run_id).data.tags.get("pack_size")
        if ctx.config.training.channels_last and not packed:  # a solo Trainer trains (and leaves) it channels-last
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        model.eval()
        return model


STAGE_TAG = "disentbench.stage"  # a cluster run's stage: trained (evaluation pending), evaluating, evaluated


def _lost(spec: RunSpec, ref: RunRef, started: float) -> RunOutcome:
    return RunOutcome(
        spec, "skipped", ref.run_id, error="lost its lease to another owner", seconds=time.perf_counter() - started
    )


def _train_and_evaluate(spec: RunSpec, ctx: StudyContext, ref: RunRef, bar: StudyProgress, checkpoint: Path) -> dict[str, float]:
    model, result = _train(spec, ctx, ref, bar, checkpoint)
    ref.check()
    return evaluate_and_record(spec, ctx, ref.run_id, model, result, bar)


def _train(spec: RunSpec, ctx: StudyContext, ref: RunRef, bar: StudyProgress, checkpoint: Path):
    """One run trained alone by the solo Trainer; returns (trained model, TrainResult)."""
    registry, config, tracker, device = ctx.registry, ctx.config, ctx.tracker, ctx.device
    data = ctx.datasets.for_training(spec.dataset, spec.dataset_params)
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
    resumed = trainer.maybe_resume()
    fresh_run_for_restart(tracker, ref, resumed)
    logged = curve_logged_through(tracker, ref.run_id, resumed)  # a resume recomputes the points after it

    def on_log(step: int, terms: dict[str, float]) -> None:
        ref.check()  # never a curve point from a process that lost the run
        if step > logged:
            tracker.log_metrics(ref.run_id, {f"train/{k}": v for k, v in terms.items()}, step)

    result = trainer.train(on_log=on_log, on_progress=bar.update_run)
    bar.finish_run(spec.steps)
    return trainer.model, result
