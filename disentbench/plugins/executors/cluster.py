"""Executors for clusters: ``ray`` (a Ray cluster) and ``slurm`` (Slurm job arrays through submitit).

Both are optional extras: ``pip install 'disentbench[ray]'`` or
``pip install 'disentbench[slurm]'``. Their configs validate without the extra
installed; the engine is imported only when a study runs (``check()`` is called
by ``run_study`` before anything is written to the tracking store, so a missing
extra is a one-line error and no half-created study).

A task is a pack, not a run. The runs still to do are grouped as the local
planner groups them (:func:`~disentbench.core.study.jobs.group_into_tasks`: runs
that may share a pack, in near-equal chunks of at most ``runs_per_task``), and
each group is one **training task** on one GPU: :class:`TrainTask` runs
:meth:`Worker.train_task <disentbench.core.study.worker.Worker.train_task>`, which
packs the group to what fits the node's free memory (``training.pack_size: auto``,
as locally) and hands every trained run back with its final checkpoint written.
Each trained run is then an **evaluation task** of its own on CPUs only
(:class:`EvaluateTask`, :meth:`Worker.evaluate_trained
<disentbench.core.study.worker.Worker.evaluate_trained>`), so GPUs never wait on
the metric suite. Ray: CPU tasks beside the GPU tasks; Slurm: a CPU job array
(its own partition, cores, memory) submitted as each training task ends.

The tasks carry the study's picklable Worker, which rebuilds plugins, datasets
and its MLflow client on whichever node runs it and logs to the run ids the
parent created. Several machines therefore need a tracking store they can all
reach (an ``mlflow server``) and a ``training.checkpoint_dir`` on a shared
filesystem (the evaluation task reads the checkpoint the training task wrote;
an interrupted run resumes wherever it is re-run).

Retries: a training task killed with its node (Ray: ``max_retries``; Slurm:
preemption or time limit, requeued through submitit's checkpoint hook) runs
again; it first looks its runs up in the tracking store, takes over the MLflow
runs its dead attempt created (never a second run per key), skips the runs that
finished and resumes the rest from their last checkpoints. A task out of
retries comes back as failed outcomes; the runs stay unfinished and the next
``disentbench run`` resumes them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from disentbench.core.config.schema import StudyConfig
from disentbench.core.contracts import PluginConfig
from disentbench.core.hookspecs import hookimpl
from disentbench.core.messages import first_line
from disentbench.core.study.jobs import RunJob, RunOutcome, group_into_tasks
from disentbench.core.tracking.tracker import absolute_tracking_uri

# Runs per training task when training.pack_size is auto on GPUs: the pack the H200 throughput was
# measured with (a node that fits fewer trains the group as several packs, one after the other).
AUTO_RUNS_PER_TASK = 512


class MissingExtra(RuntimeError):
    """An executor's optional dependency is not installed."""


def _import_extra(module: str, extra: str, executor: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise MissingExtra(
            f"the {executor!r} executor needs the {module} package ({exc}); install it with "
            f"pip install 'disentbench[{extra}]'"
        ) from None


def runs_per_task(configured: int | None, pack_size: int | str, gpu: bool) -> int:
    """Runs in one training task: the executor's ``runs_per_task``, else ``training.pack_size`` when it is
    a number, else (auto) :data:`AUTO_RUNS_PER_TASK` on GPUs and 1 on CPUs (auto never packs there)."""
    if configured is not None:
        return configured
    if pack_size != "auto":
        return int(pack_size)
    return AUTO_RUNS_PER_TASK if gpu else 1


class _NodeTask:
    """The study's worker as it travels to a node: on its device, paths made absolute.

    Picklable. ``threads`` caps torch's intra-op threads at the CPUs the task
    was given (the engine does not, and oversubscribed nodes crawl).
    """

    def __init__(self, worker, device: str, threads: int | None, memory_share: float = 1.0):
        clone = worker.with_device(device)
        clone.config_data = copy.deepcopy(clone.config_data)
        training = clone.config_data.setdefault("training", {})
        if training.get("checkpoint_dir") is not None:
            # relative to where the study was started, not to wherever the task lands
            training["checkpoint_dir"] = str(Path(training["checkpoint_dir"]).expanduser().resolve())
        clone.tracking_uri = absolute_tracking_uri(clone.tracking_uri)  # likewise a relative sqlite:///PATH
        clone.progress = False
        clone.evaluate_separately = True
        clone.memory_share = memory_share  # a fractional GPU: auto packs measure that share of its memory
        self.worker = clone
        self.threads = threads
        self.token = uuid.uuid4().hex  # identifies this study's worker in a reused process

    def _prepare(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(max(1, self.threads))


class TrainTask(_NodeTask):
    """A training task: one group of packable runs on one GPU; returns one outcome per job."""

    def __call__(self, jobs: list[RunJob]) -> list[RunOutcome]:
        self._prepare()
        return self.worker.train_task(jobs)

    def checkpoint(self, jobs: list[RunJob]):
        """submitit's hook on preemption or time limit: requeue the same task (it resumes its runs)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, jobs)


class EvaluateTask(_NodeTask):
    """An evaluation task: one trained run, CPUs only; returns its outcome."""

    def __call__(self, job: RunJob) -> RunOutcome:
        self._prepare()
        return self.worker.evaluate_trained(job)

    def checkpoint(self, job: RunJob):
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


def _failed(job, message: str):
    return RunOutcome(job.spec, "failed", error=f"{message}; re-run the study to resume this run")


def _evaluation_job(job: RunJob, outcome: RunOutcome) -> RunJob:
    return dataclasses.replace(job, reuse_run_id=outcome.run_id)


# ---------------------------------------------------------------------------
# ray


class RayConfig(PluginConfig):
    address: str | None = Field(
        None,
        description="Ray cluster address (ray://HOST:10001, HOST:6379 or auto); default: connect to a running "
        "local cluster ($RAY_ADDRESS) or start one on this machine.",
    )
    num_gpus_per_task: float | None = Field(
        None,
        ge=0,
        description="GPUs per training task (one pack); default: 1 if the cluster has GPUs and the device is not "
        "cpu, else 0. A fraction shares a GPU between packs, each sized to its share of the memory.",
    )
    num_cpus_per_task: float = Field(2.0, gt=0, description="CPU cores per training task (also caps torch threads).")
    runs_per_task: int | None = Field(
        None,
        ge=1,
        description="Most runs in one training task; default training.pack_size, or 512 with pack_size auto on GPUs.",
    )
    num_cpus_per_evaluation: float = Field(
        2.0, gt=0, description="CPU cores per evaluation task (one per run, no GPU; also caps torch threads)."
    )
    max_retries: int = Field(
        3, ge=0, description="Times Ray reruns a task whose process or node died; a rerun resumes its runs."
    )

    @field_validator("num_gpus_per_task")
    @classmethod
    def _whole_above_one(cls, value):
        if value is not None and value > 1 and value != int(value):
            raise ValueError("more than one GPU per task must be a whole number (fractions only below 1)")
        return value


# Ray reuses worker processes: keep the last study's worker (and its loaded datasets) per process.
_RAY_TASKS: dict[str, _NodeTask] = {}


def _ray_cached(task: _NodeTask) -> Any:
    cached = _RAY_TASKS.get(task.token)
    if cached is None:
        _RAY_TASKS.clear()
        _RAY_TASKS[task.token] = cached = task
    return cached


def _ray_train(task: TrainTask, jobs: list[RunJob]) -> list[RunOutcome]:
    return _ray_cached(task)(jobs)


def _ray_evaluate(task: EvaluateTask, job: RunJob) -> RunOutcome:
    return _ray_cached(task)(job)


# How long interrupted tasks get to record their runs KILLED before their worker processes are killed.
RAY_CANCEL_GRACE_SECONDS = 15.0


def _ray_cancel(ray, refs: list) -> None:
    """Cancel ``refs``: first as Ctrl-C does locally (Ray raises KeyboardInterrupt in a running task, whose
    runs end KILLED, resumable), then, after :data:`RAY_CANCEL_GRACE_SECONDS`, by killing the workers of
    tasks still running (their runs stay RUNNING until their leases lapse; a rerun resumes them either way)."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    try:
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=RAY_CANCEL_GRACE_SECONDS)
    finally:  # a second Ctrl-C during the grace period: kill them at once
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


def _ray_error(exc: Exception) -> str:
    """One line for what ``ray.get`` raised: a task's own exception comes wrapped in a RayTaskError whose
    first line is only ``ray::FUNCTION() (pid=..., ip=...)``; name the exception itself instead."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause  # type: ignore[assignment]
    return f"{type(exc).__name__}: {first_line(exc)}"


class RayExecutor:
    """Each pack group is a Ray task on one GPU; each trained run is a CPU task evaluating it."""

    name = "ray"
    description = "Packs as Ray tasks on GPUs, each run's evaluation as a CPU task (extra: ray)."
    config_class = RayConfig

    in_process = False

    def __init__(self, config: RayConfig | None = None):
        self.config = config or RayConfig()
        self._started = False

    def runs_per_task(self, study: StudyConfig) -> int:
        """Runs per training task for ``study`` (the dry run's plan)."""
        gpu = self.config.num_gpus_per_task != 0 and study.training.device != "cpu"
        return runs_per_task(self.config.runs_per_task, study.training.pack_size, gpu)

    def check(self) -> None:
        """Import Ray and connect (or start a local cluster) before the study writes anything."""
        ray = _import_extra("ray", "ray", "ray")
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.config.address, include_dashboard=False, configure_logging=False)
        except Exception as exc:
            where = self.config.address or "a local Ray cluster"
            raise RuntimeError(f"ray executor: cannot connect to {where}: {first_line(exc)}") from None
        self._started = True  # ours to shut down when the study ends

    def run(self, jobs: list, worker) -> Iterator:
        ray = _import_extra("ray", "ray", "ray")
        if not ray.is_initialized():
            self.check()
        started, self._started = self._started, False
        pending: dict = {}
        config = self.config
        try:
            gpus = config.num_gpus_per_task
            if gpus is None:
                gpus = 1.0 if worker.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
            device = "cuda" if gpus > 0 else "cpu"
            size = runs_per_task(config.runs_per_task, worker.pack_size, gpus > 0)
            chunks = group_into_tasks(jobs, size, key=getattr(worker, "pack_key", None))
            cpus = config.num_cpus_per_task
            share = gpus if 0 < gpus < 1 else 1.0
            train = ray.put(TrainTask(worker, device, max(1, int(cpus)), share))  # one copy in the object store
            evaluate = ray.put(EvaluateTask(worker, "cpu", max(1, int(config.num_cpus_per_evaluation))))
            train_remote = ray.remote(num_gpus=gpus, num_cpus=cpus, max_retries=config.max_retries)(_ray_train)
            evaluate_remote = ray.remote(
                num_gpus=0, num_cpus=config.num_cpus_per_evaluation, max_retries=config.max_retries
            )(_ray_evaluate)
            for chunk in chunks:
                pending[train_remote.remote(train, chunk)] = ("train", chunk)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    kind, payload = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # the task's process or node died, retries spent; or it raised
                        reason = f"ray {kind} task failed: {_ray_error(exc)}"
                        yield from (_failed(job, reason) for job in (payload if kind == "train" else [payload]))
                        continue
                    if kind == "evaluate":
                        yield result
                        continue
                    for job, outcome in zip(payload, result):
                        if outcome.status == "trained":
                            pending[evaluate_remote.remote(evaluate, _evaluation_job(job, outcome))] = ("evaluate", job)
                        else:
                            yield outcome
        finally:
            if pending:  # interrupted (Ctrl-C, SIGTERM): stop what has not finished
                _ray_cancel(ray, list(pending))
            if started:
                ray.shutdown()


# ---------------------------------------------------------------------------
# slurm (submitit)


class SlurmConfig(PluginConfig):
    folder: Path = Field(
        Path(".disentbench/submitit"),
        description="Folder for submitit's job pickles and logs (on a filesystem the nodes share); %j is the job id.",
    )
    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None,
        description="submitit backend: slurm, local (subprocesses on this machine), debug (in this process); "
        "default: auto-detect (slurm where sbatch exists, else local).",
    )
    partition: str | None = Field(None, description="Slurm partition of the training tasks.")
    gpus_per_task: int | None = Field(
        None,
        ge=0,
        description="GPUs per training task (>0 trains on cuda; one pack per task); default 1, or 0 when "
        "training.device is cpu.",
    )
    cpus_per_task: int = Field(2, ge=1, description="CPU cores per training task (also caps torch threads).")
    mem_gb: float | None = Field(None, gt=0, description="Memory per training task in GB (default: the partition's).")
    timeout_min: int = Field(
        24 * 60, ge=1, description="Wall-clock limit per training task (one pack) in minutes; past it, requeued."
    )
    runs_per_task: int | None = Field(
        None,
        ge=1,
        description="Most runs in one training task; default training.pack_size, or 512 with pack_size auto on GPUs.",
    )
    array_parallelism: int = Field(256, ge=1, description="At most this many training tasks run at once.")
    max_requeues: int = Field(
        3, ge=0, description="Times a task preempted or past its time limit is requeued (it resumes its runs)."
    )
    eval_partition: str | None = Field(None, description="Slurm partition of the evaluation tasks; default partition.")
    eval_cpus_per_task: int = Field(4, ge=1, description="CPU cores per evaluation task (one run, no GPU).")
    eval_mem_gb: float | None = Field(None, gt=0, description="Memory per evaluation task in GB.")
    eval_timeout_min: int = Field(120, ge=1, description="Wall-clock limit per evaluation task in minutes.")
    eval_array_parallelism: int = Field(256, ge=1, description="At most this many evaluation tasks of one array at once.")
    setup: list[str] = Field(
        default_factory=list, description="Shell lines run before each task (module load, source venv/bin/activate)."
    )
    slurm_additional_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Extra sbatch options, e.g. {account: myproj, qos: high, constraint: a100}."
    )
    poll_seconds: float = Field(10.0, gt=0, description="Longest wait between two checks of the job states.")


class SlurmExecutor:
    """Pack groups as one Slurm GPU job array; each finished pack's runs as a CPU evaluation array (submitit)."""

    name = "slurm"
    description = "Packs as a Slurm GPU job array, each run's evaluation as a CPU array task, via submitit (extra: slurm)."
    config_class = SlurmConfig

    in_process = False

    def __init__(self, config: SlurmConfig | None = None):
        self.config = config or SlurmConfig()
        self._submitit: Any = None  # the training tasks' submitit.AutoExecutor once check() has run
        self._evaluation: Any = None  # the evaluation tasks' one
        self._device = "auto"  # the study's training device (run_study checks before it runs)

    def runs_per_task(self, study: StudyConfig) -> int:
        """Runs per training task for ``study`` (the dry run's plan)."""
        return runs_per_task(self.config.runs_per_task, study.training.pack_size, self._gpus(study.training.device) > 0)

    def _gpus(self, device: str) -> int:
        if self.config.gpus_per_task is not None:
            return self.config.gpus_per_task
        return 0 if device == "cpu" else 1

    def check(self) -> None:
        """Import submitit and set up the executors (options checked) before the study writes anything."""
        submitit = _import_extra("submitit", "slurm", "slurm")
        if self._submitit is None:
            self._submitit = self._executor(submitit, evaluation=False)
            self._evaluation = self._executor(submitit, evaluation=True)

    def _executor(self, submitit, evaluation: bool):
        config = self.config
        folder = Path(config.folder).expanduser().resolve()
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=config.cluster, slurm_max_num_timeout=config.max_requeues)
        except Exception as exc:  # e.g. cluster: slurm where no sbatch exists
            message = first_line(exc)
            if "srun" in message or "sbatch" in message or "slurm cluster" in message.lower():
                # a configuration problem found before any work: bad input, with the fix
                raise ValueError(
                    f"slurm executor: {message.rstrip('.')}; set executor params cluster: local to run the jobs "
                    "on this machine, or run on a Slurm login node"
                ) from None
            raise RuntimeError(f"slurm executor: {message}") from None
        gpus = 0 if evaluation else self._gpus(self._device)
        parameters: dict[str, Any] = {
            "name": "disentbench-eval" if evaluation else "disentbench",
            "timeout_min": config.eval_timeout_min if evaluation else config.timeout_min,
            "cpus_per_task": config.eval_cpus_per_task if evaluation else config.cpus_per_task,
            "tasks_per_node": 1,
            "nodes": 1,
        }
        mem_gb = config.eval_mem_gb if evaluation else config.mem_gb
        if mem_gb is not None:
            parameters["mem_gb"] = mem_gb
        if executor.cluster == "slurm":
            parameters.update(
                slurm_gpus_per_task=gpus or None,
                slurm_partition=(config.eval_partition or config.partition) if evaluation else config.partition,
                slurm_array_parallelism=config.eval_array_parallelism if evaluation else config.array_parallelism,
                slurm_additional_parameters=dict(config.slurm_additional_parameters) or None,
                slurm_setup=list(config.setup) or None,
            )
        elif executor.cluster == "local":
            parameters["gpus_per_node"] = gpus
            if config.setup:
                parameters["local_setup"] = list(config.setup)
        try:
            executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
        except Exception as exc:
            raise ValueError(f"executor.params: submitit rejected the Slurm options: {first_line(exc)}") from None
        return executor

    def _submit(self, executor, task, items: list) -> list:
        try:
            return executor.map_array(task, items)  # one array job; one pickle per task
        except Exception as exc:
            raise RuntimeError(f"slurm executor: submission failed: {first_line(exc)}") from None

    def run(self, jobs: list, worker) -> Iterator:
        if not jobs:
            return
        if self._device != worker.device:  # the GPUs per task follow the study's device
            self._device, self._submitit = worker.device, None
        self.check()
        config = self.config
        gpus = self._gpus(worker.device)
        device = "cuda" if gpus > 0 else "cpu"
        size = runs_per_task(config.runs_per_task, worker.pack_size, gpus > 0)
        chunks = group_into_tasks(jobs, size, key=getattr(worker, "pack_key", None))
        train = TrainTask(worker, device, config.cpus_per_task)
        evaluate = EvaluateTask(worker, "cpu", config.eval_cpus_per_task)
        # (kind, handle, payload): payload is the training task's jobs, or the one evaluated job
        pending: list[tuple[str, Any, Any]] = [
            ("train", handle, chunk) for handle, chunk in zip(self._submit(self._submitit, train, chunks), chunks)
        ]
        delay = 0.2
        try:
            while pending:
                finished: list[tuple[tuple[str, Any, Any], Exception | None]] = []
                for entry in pending:
                    try:
                        if entry[1].done():
                            finished.append((entry, None))
                    except Exception as exc:  # the debug backend runs the task inside done()
                        finished.append((entry, exc))
                done_ids = {id(entry) for entry, _ in finished}
                pending = [entry for entry in pending if id(entry) not in done_ids]
                to_evaluate: list[RunJob] = []
                for (kind, handle, payload), error in finished:
                    try:
                        if error is not None:
                            raise error
                        result = handle.result()
                    except Exception as exc:  # requeues spent, node failure, unpicklable result
                        log = getattr(getattr(handle, "paths", None), "stderr", None)
                        where = f" (log: {log})" if log else ""
                        reason = f"slurm {kind} task {handle.job_id} failed: {first_line(exc)}{where}"
                        yield from (_failed(job, reason) for job in (payload if kind == "train" else [payload]))
                        continue
                    if kind == "evaluate" or not isinstance(result, list):
                        yield result
                        continue
                    for job, outcome in zip(payload, result):
                        if getattr(outcome, "status", None) == "trained":
                            to_evaluate.append(_evaluation_job(job, outcome))
                        else:
                            yield outcome
                if to_evaluate:  # one CPU array per round of finished training tasks
                    handles = self._submit(self._evaluation, evaluate, to_evaluate)
                    pending.extend(("evaluate", handle, job) for handle, job in zip(handles, to_evaluate))
                if pending:
                    time.sleep(delay)
                    delay = 0.2 if finished else min(delay * 1.5, config.poll_seconds)
        finally:
            for _, handle, _ in pending:  # interrupted: cancel what has not finished
                try:
                    handle.cancel(check=False)
                except Exception:
                    pass


@hookimpl
def register_executors(register):
    register(RayExecutor)
    register(SlurmExecutor)
