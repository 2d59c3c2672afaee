"""The contract between a study and its executors: what a run to execute looks like, what comes back.

An executor receives :class:`RunJob` objects and a worker, and yields one
:class:`RunOutcome` per job; with packed training it may group jobs with
:func:`group_into_packs` first. Cluster executors ship groups of packable jobs
(:func:`group_into_tasks`) as tasks, and evaluate each trained run in a task of
its own (a ``"trained"`` outcome is what a training task hands back for that). These types live apart from the study's
orchestration so that executors (built-in or third-party) depend only on this
small, picklable vocabulary and never on the code that calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from disentbench.core.config.grid import RunSpec, canonical_json
from disentbench.core.config.schema import StudyConfig


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # "finished" | "skipped" | "failed"; "trained" only between a cluster executor's tasks
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


@dataclass(frozen=True)
class RunJob:
    """One run to execute: picklable, so executors can ship it to other processes or machines."""

    spec: RunSpec
    parent_run_id: str
    reuse_run_id: str | None
    position: int  # 1-based among this invocation's runs
    total: int


class Executor(Protocol):
    """What an executor plugin's factory returns: runs ``jobs`` through ``worker``, yields their outcomes."""

    def run(self, jobs: list[RunJob], worker: Any) -> Iterator[RunOutcome]: ...


def pack_key(spec: RunSpec) -> str:
    """What runs sharing a pack must agree on: dataset and params, model, steps, batch size and every
    model param except swept numbers (those, and the seed, may differ inside a pack)."""
    fixed = {
        k: v
        for k, v in spec.model_params.items()
        if not (k in spec.swept and isinstance(v, (int, float)) and not isinstance(v, bool))
    }
    return canonical_json([spec.dataset, spec.dataset_params, spec.model, fixed, spec.steps, spec.batch_size])


def group_into_packs(
    jobs: list[RunJob],
    pack_size: int | Callable[[RunJob], int],
    key: Callable[[RunJob], str] | None = None,
) -> list[list[RunJob]]:
    """Split ``jobs`` into packs of at most ``pack_size`` (an int, or a job's own limit) with equal ``key``.

    Packs come in the order of their first job, and keep the jobs' order
    within; a job whose limit is 1 is a pack of its own (its key is never
    computed). ``key`` defaults to :func:`pack_key` of the job's spec.
    """
    size_of = pack_size if callable(pack_size) else (lambda job: pack_size)
    key = key or (lambda job: pack_key(job.spec))
    packs: list[list[RunJob]] = []
    open_packs: dict[str, list[RunJob]] = {}
    for job in jobs:
        size = size_of(job)
        if size <= 1:
            packs.append([job])
            continue
        k = key(job)
        current = open_packs.get(k)
        if current is None or len(current) >= size:
            current = open_packs[k] = []
            packs.append(current)
        current.append(job)
    return packs


def group_into_tasks(
    jobs: list[RunJob], runs_per_task: int, key: Callable[[RunJob], str] | None = None
) -> list[list[RunJob]]:
    """Cluster tasks: the jobs of each pack key (:func:`pack_key` by default) split into the fewest
    chunks of at most ``runs_per_task``, of near-equal sizes (300 runs, at most 256 a task: 150 + 150,
    not 256 + 44), so that no task is a straggler.

    Chunks come in the order of their group's first job and keep the jobs' order within.
    """
    limit = max(1, runs_per_task)
    groups = group_into_packs(jobs, len(jobs) + 1 if limit > 1 else 1, key)
    tasks: list[list[RunJob]] = []
    for group in groups:
        count = -(-len(group) // limit)
        base, extra = divmod(len(group), count)
        start = 0
        for i in range(count):
            size = base + (1 if i < extra else 0)
            tasks.append(group[start : start + size])
            start += size
    return tasks
