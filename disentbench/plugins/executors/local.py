"""Executors decide where and in what order a study's runs execute.

An executor plugin's factory takes its config and returns an object with
``run(jobs, worker) -> iterator of outcomes``: ``worker(job)`` trains,
evaluates and records one :class:`~disentbench.core.study.jobs.RunJob` and returns
its ``RunOutcome``; ``worker.run_in_packs(jobs)`` does the same for a list of
jobs, grouped into packs trained together (packed training,
``training.pack_size``), and yields their outcomes. The worker is picklable
and rebuilds what it needs (plugins, datasets, MLflow client) in whichever
process runs it, so an executor only has to move ``(worker, job)`` pairs and
bring outcomes back.
The study's parent run and experiment exist before any job starts.

Built-ins, registered through the same hook as any third-party executor:

* ``local`` - every job in this process, in grid order (default); with
  packing on, jobs are grouped into packs
  (:func:`~disentbench.core.study.jobs.group_into_packs`) and each pack is trained
  as one batched computation; with ``evaluation_processes``, trained runs are
  evaluated in a process pool while the next pack trains;
* ``multiprocess`` - a pool of worker processes on this machine, one per GPU
  or per share of the CPU cores; with packing on, each process gets chunks of
  packable jobs and packs them itself (on its own device, so ``auto`` measures
  the GPU it uses). A worker process exits when the invocation that started
  it dies, even by ``kill -9``.

The cluster executors (``ray``, ``slurm``) ship a pack group per training task
and each trained run's evaluation as a CPU task of its own (``cluster.py``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

from pydantic import Field, field_validator

from disentbench.core.config.schema import device_name
from disentbench.core.contracts import PluginConfig
from disentbench.core.hookspecs import hookimpl
from disentbench.core.study.jobs import RunOutcome, group_into_packs
from disentbench.core.training.trainer import DeviceUnavailable, resolve_device


class LocalConfig(PluginConfig):
    evaluation_processes: int = Field(
        0,
        ge=0,
        le=256,
        description="Processes that evaluate trained runs while this one trains the next pack "
        "(0: evaluate each run here, right after its training).",
    )
    evaluation_device: str | None = Field(
        None, description="Device the evaluation processes encode on; default the training device."
    )

    @field_validator("evaluation_device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return None if value is None else device_name(value)


class LocalExecutor:
    """Trains every job in this process, in grid order (packs in the order of their first job).

    With ``evaluation_processes`` above 0, the metric suite of each trained run
    runs in a pool of processes while this one trains the next pack, so a GPU
    does not wait on CPU-bound metrics: a trained run's lease is handed to the
    pool (:meth:`Worker.evaluate_trained
    <disentbench.core.study.worker.Worker.evaluate_trained>` loads it from its
    final checkpoint), and outcomes come back as evaluations finish.
    """

    name = "local"
    description = "Run every run in this process, in order (optionally evaluating in a process pool beside it)."
    config_class = LocalConfig

    in_process = True  # progress is shown by the worker itself

    def __init__(self, config: LocalConfig | None = None):
        self.config = config or LocalConfig()

    def check(self) -> None:
        """An evaluation device this machine lacks: a one-line error before anything is written."""
        device = self.config.evaluation_device
        if self.config.evaluation_processes and device is not None:
            try:
                resolve_device(device)
            except DeviceUnavailable as exc:
                raise DeviceUnavailable(f"executor.params.evaluation_device: {exc}") from None

    def run(self, jobs: list, worker) -> Iterator:
        if self.config.evaluation_processes and jobs and hasattr(worker, "training_only"):
            yield from self._run_overlapped(jobs, worker)
            return
        yield from _train(jobs, worker)

    def _run_overlapped(self, jobs: list, worker) -> Iterator:
        import dataclasses
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, wait

        processes = min(self.config.evaluation_processes, len(jobs))
        cores = os.cpu_count() or 1
        device = self.config.evaluation_device or worker.device
        by_key = {job.spec.run_key: job for job in jobs}
        context = multiprocessing.get_context("spawn")  # CUDA and fork do not mix
        evaluator = worker.with_device(device)
        evaluator.progress = False
        pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=context,
            initializer=_init_evaluation_process,
            initargs=(evaluator, max(1, cores // (processes + 1))),
        )
        pending: dict = {}

        def finished(block: bool) -> Iterator:
            if not pending:
                return
            done, _ = wait(list(pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the process died (out of memory, segfault): the run resumes on a re-run
                    outcome = RunOutcome(
                        job.spec, "failed", error=f"evaluation process failed: {type(exc).__name__}: {exc}"
                    )
                if worker.bar is not None:
                    worker.bar.message(f"evaluated {outcome.status} {outcome.spec.run_name}")
                yield outcome

        try:
            for outcome in _train(jobs, worker.training_only()):
                if outcome.status == "trained":
                    job = dataclasses.replace(by_key[outcome.spec.run_key], reuse_run_id=outcome.run_id)
                    pending[pool.submit(_evaluate_in_process, job)] = job
                else:
                    yield outcome
                yield from finished(block=False)
            while pending:
                yield from finished(block=True)
        finally:
            pool.shutdown(wait=not pending, cancel_futures=True)


def _train(jobs: list, worker) -> Iterator:
    if not hasattr(worker, "run_in_packs") or not worker.may_pack():
        for job in jobs:
            yield worker(job)
        return
    # Packs in the order of their first job; the study reports outcomes in grid order.
    yield from worker.run_in_packs(jobs)


_EVALUATION_WORKER = None


def _init_evaluation_process(worker, threads: int) -> None:
    global _EVALUATION_WORKER
    _exit_with_parent()
    _one_line_warnings()
    import torch

    torch.set_num_threads(threads)
    _EVALUATION_WORKER = worker


def _evaluate_in_process(job):
    return _EVALUATION_WORKER.evaluate_trained(job)


class MultiprocessConfig(PluginConfig):
    workers: int | None = Field(
        None, ge=1, description="Worker processes; default one per listed device, else one per 2 CPU cores."
    )
    devices: list[str] | None = Field(
        None, description="Devices handed to workers round-robin, e.g. [cuda:0, cuda:1]; default the run's device."
    )

    @field_validator("devices")
    @classmethod
    def _not_empty(cls, devices):
        if devices is not None and not devices:
            raise ValueError("give at least one device or leave devices out")
        return devices


# Each worker process keeps its Worker (and its loaded datasets) across jobs.
_PROCESS_WORKER = None


def _exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Exit this worker process as soon as the process that started it is gone (killed, even by ``kill -9``).

    A pool worker otherwise waits forever for its next task, holding its
    dataset and model memory. Its runs keep their leases only until those
    expire; on this machine they read as stale at once (their owner pid is gone).
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="disentbench-parent-watch", daemon=True).start()


def _one_line_warnings() -> None:
    import warnings

    from disentbench.core.messages import show_warning_one_line

    if warnings.showwarning is getattr(warnings, "_showwarning_orig", None):
        warnings.showwarning = show_warning_one_line  # warnings as one line here too, as in the CLI


def _init_process(worker, devices: list[str], counter, threads: int, workers: int = 1) -> None:
    global _PROCESS_WORKER
    _exit_with_parent()
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    import torch

    _one_line_warnings()
    torch.set_num_threads(threads)
    device = devices[index % len(devices)]
    _PROCESS_WORKER = worker.with_device(device)
    # processes sharing this device split its free memory between their auto-sized packs
    sharing = sum(1 for i in range(workers) if devices[i % len(devices)] == device)
    _PROCESS_WORKER.memory_share = 1.0 / max(1, sharing)


def _run_in_process(job):
    return _PROCESS_WORKER(job)


def _run_in_packs_in_process(jobs):
    return list(_PROCESS_WORKER.run_in_packs(jobs))


class MultiprocessExecutor:
    """A pool of spawned worker processes; each logs to MLflow by explicit run id.

    With packing on (``training.pack_size`` above 1, or ``auto`` with a CUDA
    device), a task is a chunk of packable jobs: a pack of at most
    ``pack_size`` jobs, or for ``auto`` up to an equal share of the jobs, which
    the process packs itself to what fits its own device. Outcomes of a chunk
    come back when the whole chunk is done.
    """

    name = "multiprocess"
    description = "A pool of worker processes on this machine (one per GPU, or per 2 CPU cores)."
    config_class = MultiprocessConfig

    in_process = False

    def __init__(self, config: MultiprocessConfig | None = None):
        self.config = config or MultiprocessConfig()

    def run(self, jobs: list, worker) -> Iterator:
        import multiprocessing

        if not jobs:
            return
        devices = self.config.devices or [worker.device]
        cores = os.cpu_count() or 1
        workers = self.config.workers or (len(devices) if self.config.devices else max(1, cores // 2))
        workers = min(workers, len(jobs))
        context = multiprocessing.get_context("spawn")  # CUDA and fork do not mix
        counter = context.Value("i", 0)
        threads = max(1, cores // workers)
        chunks = None
        if hasattr(worker, "run_in_packs") and worker.may_pack(devices):
            setting = worker.pack_size
            limit = setting if setting != "auto" else max(1, math.ceil(len(jobs) / workers))
            chunks = group_into_packs(jobs, limit, key=worker.pack_key)
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_process,
            initargs=(worker, devices, counter, threads, workers),
        ) as pool:
            if chunks is None:
                futures = {pool.submit(_run_in_process, job): [job] for job in jobs}
            else:
                futures = {pool.submit(_run_in_packs_in_process, chunk): chunk for chunk in chunks}
            for future in as_completed(futures):
                chunk = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # a worker process died (OOM, segfault): the runs can be retried
                    error = f"worker process failed: {type(exc).__name__}: {exc}"
                    for job in chunk:
                        yield RunOutcome(job.spec, "failed", error=error)
                    continue
                yield from (result if isinstance(result, list) else [result])


@hookimpl
def register_executors(register):
    register(LocalExecutor)
    register(MultiprocessExecutor)
