"""The plan a cluster executor would submit, and what it costs: tasks, runs per task, GPU-hours, wall time.

``disentbench run CONFIG --executor ray --dry-run`` (or slurm) prints this so a
user can size a cluster before spending it. The tasks are exactly the ones the
executor submits (:func:`~disentbench.core.study.jobs.group_into_tasks` over
:func:`~disentbench.core.study.jobs.pack_key`; the executor also splits runs whose
parameter shapes differ, which only a swept architecture number such as
``num_latent`` causes). Costs come from one throughput figure, model-steps per
second of one GPU training a pack: a task of ``r`` runs of ``s`` steps takes
``r * s / rate`` seconds, and tasks are placed longest first on the GPU that
frees up first (what a scheduler with a FIFO queue of equal tasks does). A pack
smaller than the one the rate was measured on runs at a lower rate, so the
figures are a lower bound on time for small packs. Evaluation runs in CPU
tasks beside the GPUs and is not counted.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from disentbench.core.config.grid import RunSpec
from disentbench.core.study.jobs import RunJob, group_into_tasks, pack_key

# The study's conv VAE packed on one H200 (triton formulation, bf16, 512 models per pack); see
# docs/architecture.md "Packed training" and benchmarks/README.md.
DEFAULT_MODEL_STEPS_PER_SECOND = 8625.0
DEFAULT_GPU_COUNTS = (1, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class TaskPlan:
    """One training task: a pack group's share of runs."""

    model: str
    dataset: str
    runs: int
    steps: int
    group: str  # the pack key its runs share

    @property
    def model_steps(self) -> int:
        return self.runs * self.steps


@dataclass(frozen=True)
class ClusterPlan:
    tasks: list[TaskPlan]
    runs_per_task: int
    model_steps_per_second: float

    @property
    def runs(self) -> int:
        return sum(t.runs for t in self.tasks)

    @property
    def gpu_hours(self) -> float:
        return sum(self.task_seconds(t) for t in self.tasks) / 3600

    def task_seconds(self, task: TaskPlan) -> float:
        return task.model_steps / self.model_steps_per_second

    def wall_seconds(self, gpus: int) -> float:
        """Time until the last task ends on ``gpus`` GPUs, one task per GPU at a time, longest first."""
        loads = [0.0] * max(1, gpus)
        for seconds in sorted((self.task_seconds(t) for t in self.tasks), reverse=True):
            heapq.heapreplace(loads, loads[0] + seconds)
        return max(loads)


def plan_tasks(specs: Sequence[RunSpec], runs_per_task: int, model_steps_per_second: float) -> ClusterPlan:
    """The training tasks a cluster executor submits for ``specs`` (runs still to do), and their cost."""
    if model_steps_per_second <= 0:
        raise ValueError("model-steps per second must be positive")
    jobs = [RunJob(spec, "", None, i + 1, len(specs)) for i, spec in enumerate(specs)]
    tasks = [
        TaskPlan(chunk[0].spec.model, chunk[0].spec.dataset, len(chunk), chunk[0].spec.steps, pack_key(chunk[0].spec))
        for chunk in group_into_tasks(jobs, runs_per_task)
    ]
    return ClusterPlan(tasks, runs_per_task, model_steps_per_second)


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    if hours >= 48:
        return f"{hours / 24:.1f} days"
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{seconds / 60:.1f} min"


def describe_plan(plan: ClusterPlan, executor: str, gpu_counts: Sequence[int] = DEFAULT_GPU_COUNTS) -> list[str]:
    """The dry run's lines: the tasks by size, the GPU-hours and the wall time on each of ``gpu_counts`` GPUs."""
    sizes: dict[int, int] = {}
    for task in plan.tasks:
        sizes[task.runs] = sizes.get(task.runs, 0) + 1
    by_size = ", ".join(f"{n} x {runs} runs" for runs, n in sorted(sizes.items(), reverse=True))
    groups = len({t.group for t in plan.tasks})
    lines = [
        f"{executor}: {len(plan.tasks)} training tasks (one pack each, one GPU each) for {plan.runs} runs "
        f"in {groups} pack groups: {by_size or 'none'}; at most {plan.runs_per_task} runs per task",
        f"{plan.runs} evaluation tasks (one per run, CPU only), each started when its run's pack finishes",
        f"estimate at {plan.model_steps_per_second:,.0f} model-steps/s per GPU: "
        f"{plan.gpu_hours:,.1f} GPU-hours of training",
    ]
    longest = max((plan.task_seconds(t) for t in plan.tasks), default=0.0)
    if plan.tasks:
        lines.append(f"longest task {_duration(longest)}; projected wall time (training):")
        for gpus in gpu_counts:
            busy = min(gpus, len(plan.tasks))
            lines.append(f"  {gpus:>5} GPUs: {_duration(plan.wall_seconds(gpus)):>10}  ({busy} GPUs busy at the start)")
    return lines
