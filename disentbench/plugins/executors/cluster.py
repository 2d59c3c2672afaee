"""Executors for clusters: ``ray`` (a Ray cluster) and ``slurm`` (Slurm job arrays through submitit).

Both are optional extras: ``pip install 'disentbench[ray]'`` or
``pip install 'disentbench[slurm]'``. Their configs validate without the extra
installed; the engine is imported only when a study runs (``check()`` is called
by ``run_study`` before anything is written to the tracking store, so a missing
extra is a one-line error and no half-created study).

Each job is shipped as ``(task, RunJob)``: ``task`` wraps the study's picklable
:class:`~disentbench.core.study.worker.Worker`, which rebuilds plugins, datasets and
its MLflow client on whichever node runs it and logs to the run ids the parent
created. Several machines therefore need a tracking store they can all reach
(an ``mlflow server``, e.g. on PostgreSQL) and a ``training.checkpoint_dir`` on a
shared filesystem (so an interrupted run resumes wherever it is re-run).

One task is one run: these executors never pack runs (packed training,
``training.pack_size``, is done by the ``local`` and ``multiprocess``
executors); a packed run and a solo run of the same key share checkpoints, so
either may resume the other.

A task that dies (node lost, Slurm timeout or preemption) comes back as a
failed outcome; its MLflow run stays unfinished and the next
``disentbench run`` resumes it from its last checkpoint. Neither engine retries
on its own: a retried task could not take over the dead task's MLflow run.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from disentbench.core.contracts import PluginConfig
from disentbench.core.hookspecs import hookimpl
from disentbench.core.messages import first_line
from disentbench.core.study.jobs import RunOutcome


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


class ClusterTask:
    """What runs on a cluster node: the study's worker on its device, with paths made absolute.

    Picklable. ``threads`` caps torch's intra-op threads at the CPUs the task
    was given (the engine does not, and oversubscribed nodes crawl).
    """

    def __init__(self, worker, device: str, threads: int | None):
        clone = worker.with_device(device)
        clone.config_data = copy.deepcopy(clone.config_data)
        training = clone.config_data.setdefault("training", {})
        if training.get("checkpoint_dir") is not None:
            # relative to where the study was started, not to wherever the task lands
            training["checkpoint_dir"] = str(Path(training["checkpoint_dir"]).expanduser().resolve())
        clone.progress = False
        self.worker = clone
        self.threads = threads
        self.token = uuid.uuid4().hex  # identifies this study's worker in a reused process

    def __call__(self, job):
        if self.threads:
            import torch

            torch.set_num_threads(max(1, self.threads))
        return self.worker(job)


def _failed(job, message: str):
    return RunOutcome(job.spec, "failed", error=f"{message}; re-run the study to resume this run")


# ---------------------------------------------------------------------------
# ray


class RayConfig(PluginConfig):
    address: str | None = Field(
        None,
        description="Ray cluster address (ray://HOST:10001, HOST:6379 or auto); default: connect to a running "
        "local cluster ($RAY_ADDRESS) or start one on this machine.",
    )
    num_gpus_per_run: float | None = Field(
        None,
        ge=0,
        description="GPUs per run; fractions pack runs on a GPU (0.25: four per GPU). Default: 1 if the cluster "
        "has GPUs and the device is not cpu, else 0.",
    )
    num_cpus_per_run: float = Field(1.0, gt=0, description="CPU cores reserved per run (also caps torch threads).")

    @field_validator("num_gpus_per_run")
    @classmethod
    def _whole_above_one(cls, value):
        if value is not None and value > 1 and value != int(value):
            raise ValueError("more than one GPU per run must be a whole number (fractions only below 1)")
        return value


# Ray reuses worker processes: keep the last study's worker (and its loaded datasets) per process.
_RAY_TASKS: dict[str, ClusterTask] = {}


def _ray_run(task: ClusterTask, job):
    cached = _RAY_TASKS.get(task.token)
    if cached is None:
        _RAY_TASKS.clear()
        _RAY_TASKS[task.token] = cached = task
    return cached(job)


class RayExecutor:
    """Each run is a Ray task with ``num_gpus_per_run`` GPUs and ``num_cpus_per_run`` CPUs."""

    name = "ray"
    description = "Each run as a Ray task with GPU/CPU shares, on a Ray cluster or a local one (extra: ray)."
    config_class = RayConfig

    in_process = False

    def __init__(self, config: RayConfig | None = None):
        self.config = config or RayConfig()
        self._started = False

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
        try:
            gpus = self.config.num_gpus_per_run
            if gpus is None:
                gpus = 1.0 if worker.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
            cpus = self.config.num_cpus_per_run
            task = ClusterTask(worker, "cuda" if gpus > 0 else "cpu", max(1, int(cpus)))
            remote = ray.remote(num_gpus=gpus, num_cpus=cpus, max_retries=0)(_ray_run)
            shared = ray.put(task)  # one copy in the object store, not one per run
            pending = {remote.remote(shared, job): job for job in jobs}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # the task's process or node died
                        outcome = _failed(job, f"ray task failed: {type(exc).__name__}: {first_line(exc)}")
                    yield outcome
        finally:
            for ref in pending:  # interrupted: stop what has not finished
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
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
    partition: str | None = Field(None, description="Slurm partition.")
    gpus_per_task: int = Field(0, ge=0, description="GPUs per run (>0 trains on cuda).")
    cpus_per_task: int = Field(2, ge=1, description="CPU cores per run (also caps torch threads).")
    mem_gb: float | None = Field(None, gt=0, description="Memory per run in GB (default: the partition's).")
    timeout_min: int = Field(24 * 60, ge=1, description="Wall-clock limit per run in minutes.")
    array_parallelism: int = Field(256, ge=1, description="At most this many array tasks run at once.")
    setup: list[str] = Field(
        default_factory=list, description="Shell lines run before each task (module load, source venv/bin/activate)."
    )
    slurm_additional_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Extra sbatch options, e.g. {account: myproj, qos: high, constraint: a100}."
    )
    poll_seconds: float = Field(10.0, gt=0, description="Longest wait between two checks of the job states.")


class SlurmExecutor:
    """All runs as one Slurm job array (submitit ``map_array``); outcomes come back as tasks finish."""

    name = "slurm"
    description = "All runs as one Slurm job array through submitit, GPUs per task (extra: slurm)."
    config_class = SlurmConfig

    in_process = False

    def __init__(self, config: SlurmConfig | None = None):
        self.config = config or SlurmConfig()
        self._submitit: Any = None  # a submitit.AutoExecutor once check() has run

    def check(self) -> None:
        """Import submitit and set up the executor (options checked) before the study writes anything."""
        submitit = _import_extra("submitit", "slurm", "slurm")
        if self._submitit is None:
            self._submitit = self._executor(submitit)

    def _executor(self, submitit):
        config = self.config
        folder = Path(config.folder).expanduser().resolve()
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=config.cluster)
        except Exception as exc:  # e.g. cluster: slurm where no sbatch exists
            message = first_line(exc)
            if "srun" in message or "sbatch" in message or "slurm cluster" in message.lower():
                # a configuration problem found before any work: bad input, with the fix
                raise ValueError(
                    f"slurm executor: {message.rstrip('.')}; set executor params cluster: local to run the jobs "
                    "on this machine, or run on a Slurm login node"
                ) from None
            raise RuntimeError(f"slurm executor: {message}") from None
        parameters: dict[str, Any] = {
            "name": "disentbench",
            "timeout_min": config.timeout_min,
            "cpus_per_task": config.cpus_per_task,
            "tasks_per_node": 1,
            "nodes": 1,
        }
        if config.mem_gb is not None:
            parameters["mem_gb"] = config.mem_gb
        if executor.cluster == "slurm":
            parameters.update(
                slurm_gpus_per_task=config.gpus_per_task or None,
                slurm_partition=config.partition,
                slurm_array_parallelism=config.array_parallelism,
                slurm_additional_parameters=dict(config.slurm_additional_parameters) or None,
                slurm_setup=list(config.setup) or None,
            )
        elif executor.cluster == "local":
            parameters["gpus_per_node"] = config.gpus_per_task
            if config.setup:
                parameters["local_setup"] = list(config.setup)
        try:
            executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
        except Exception as exc:
            raise ValueError(f"executor.params: submitit rejected the Slurm options: {first_line(exc)}") from None
        return executor

    def run(self, jobs: list, worker) -> Iterator:
        if not jobs:
            return
        self.check()
        executor = self._submitit
        task = ClusterTask(worker, "cuda" if self.config.gpus_per_task > 0 else "cpu", self.config.cpus_per_task)
        try:
            submitted = executor.map_array(task, jobs)  # one array job; one pickle per task
        except Exception as exc:
            raise RuntimeError(f"slurm executor: submission failed: {first_line(exc)}") from None
        pending = dict(zip(range(len(jobs)), zip(submitted, jobs)))
        delay = 0.2
        try:
            while pending:
                finished: dict[int, Exception | None] = {}
                for i, (handle, _) in pending.items():
                    try:
                        if handle.done():
                            finished[i] = None
                    except Exception as exc:  # the debug backend runs the task inside done()
                        finished[i] = exc
                for i, error in finished.items():
                    handle, job = pending.pop(i)
                    try:
                        if error is not None:
                            raise error
                        outcome = handle.result()
                    except Exception as exc:  # timeout, preemption, node failure, unpicklable result
                        log = getattr(getattr(handle, "paths", None), "stderr", None)
                        where = f" (log: {log})" if log else ""
                        outcome = _failed(job, f"slurm task {handle.job_id} failed: {first_line(exc)}{where}")
                    yield outcome
                if pending:
                    time.sleep(delay)
                    delay = 0.2 if finished else min(delay * 1.5, self.config.poll_seconds)
        finally:
            for handle, _ in pending.values():  # interrupted: cancel what has not finished
                try:
                    handle.cancel(check=False)
                except Exception:
                    pass


@hookimpl
def register_executors(register):
    register(RayExecutor)
    register(SlurmExecutor)
