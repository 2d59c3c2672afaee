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
  as one batched computation;
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

from disentbench.core.contracts import PluginConfig
from disentbench.core.hookspecs import hookimpl
from disentbench.core.study.jobs import RunOutcome, group_into_packs


class LocalConfig(PluginConfig):
    pass


class LocalExecutor:
    """Runs every job in this process, in grid order."""

    name = "local"
    description = "Run every run in this process, in order."
    config_class = LocalConfig

    in_process = True  # progress is shown by the worker itself

    def __init__(self, config: LocalConfig | None = None):
        self.config = config or LocalConfig()

    def run(self, jobs: list, worker) -> Iterator:
        if not hasattr(worker, "run_in_packs") or not worker.may_pack():
            for job in jobs:
                yield worker(job)
            return
        # Packs in the order of their first job; the study reports outcomes in grid order.
        yield from worker.run_in_packs(jobs)


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


def _init_process(worker, devices: list[str], counter, threads: int, workers: int = 1) -> None:
    global _PROCESS_WORKER
    _exit_with_parent()
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    import warnings

    import torch

    from disentbench.core.messages import show_warning_one_line

    if warnings.showwarning is getattr(warnings, "_showwarning_orig", None):
        warnings.showwarning = show_warning_one_line  # warnings as one line here too, as in the CLI
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
