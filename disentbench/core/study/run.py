"""Run a study: validated config -> grid -> executor -> train, evaluate, record in MLflow.

Nothing is written to the tracking store before the whole config has been
validated. Re-running a study skips every run key that already finished; an
unfinished run of the same key is reused (not duplicated) and resumes from its
local checkpoint.

This module is the orchestration only: it checks the inputs, decides which
runs are still to do, creates the study's parent run, hands
:class:`~disentbench.core.study.jobs.RunJob` objects and a
:class:`~disentbench.core.study.worker.Worker` to the configured executor,
re-scores finished runs the config gained scorers for
(:mod:`~disentbench.core.study.rescoring`) and closes the study. How one run
or one pack is trained and recorded lives in the worker and the rooms it uses.

Packed training (``training.pack_size``): executors that support it hand the
worker groups of jobs (:func:`~disentbench.core.study.jobs.group_into_packs`: same
:func:`~disentbench.core.study.jobs.pack_key`, i.e. runs differing only in numeric
swept hyperparameters and seed) and :meth:`Worker.run_one_pack
<disentbench.core.study.worker.Worker.run_one_pack>` trains each group with one
:class:`~disentbench.core.training.packed.trainer.PackedTrainer`; everything around training
(locks, claims, evaluation, artifacts, failures) is per run, as for a run
trained alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from disentbench.core.config.grid import canonical_json, expand_grid
from disentbench.core.config.schema import StudyConfig
from disentbench.core.display.progress import StudyProgress
from disentbench.core.paths import check_data_root
from disentbench.core.registry import PluginRegistry, get_plugin_manager
from disentbench.core.study.context import DatasetCache, build_scorers
from disentbench.core.study.jobs import RunJob, RunOutcome, StudyResult
from disentbench.core.study.locks import keep_lease
from disentbench.core.study.overview import StudyOverview
from disentbench.core.study.recording import scores_of
from disentbench.core.study.rescoring import headline_keys, score_finished_runs
from disentbench.core.study.worker import Worker
from disentbench.core.tracking import tracker as tracking
from disentbench.core.training.trainer import DeviceUnavailable, resolve_device


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
    tracking.lease_seconds()  # a bad $DISENTBENCH_LEASE_SECONDS is bad input, found before any write
    tracking.check_tracking_uri(tracking.resolve_tracking_uri(tracking_uri or config.tracking.uri))

    # Check every dataset's files first: a missing file is a one-line error
    # before anything is written to the tracking store.
    datasets = DatasetCache(registry)
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

    # Scorers are built (a constructor that raises stops here) before anything is written.
    scorers = build_scorers(config, registry)
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
            outcomes_by_key[spec.run_key] = RunOutcome(
                spec, "skipped", finished.info.run_id, scores_of(finished.data.metrics), error="done"
            )
        else:
            if runs:  # interrupted or failed before: continue that run, never a duplicate
                reuse[spec.run_key] = runs[0].info.run_id
            todo.append(spec)

    # The parent creates the experiment and its run before any worker starts;
    # workers log to explicit run ids. Parents of dead invocations are ended KILLED first.
    tracker.end_stale_study_runs()
    parent_run_id = tracker.start_study_run(config.name, len(specs), config_path)
    with _ended_on_the_way_out(tracker, parent_run_id), keep_lease(tracker, parent_run_id), _sigterm_interrupts():
        tracker.log_params(parent_run_id, {"config": canonical_json(config.model_dump(mode="json"))[:6000]})
        return _run_jobs(
            config, registry, tracker, parent_run_id, specs, todo, reuse, finished_runs, outcomes_by_key,
            datasets, scorers, executor_obj, device, progress,
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM during a study: handled as Ctrl-C is (runs in progress end KILLED, exit 130, resumable)."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM raises :class:`Terminated` instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # no signals here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _ended_on_the_way_out(tracker: tracking.Tracker, parent_run_id: str) -> Iterator[None]:
    """The study's parent run ends KILLED on an interrupt (Ctrl-C, SIGTERM), FAILED on any other exception.

    A normal return has ended it already (FINISHED, or FAILED if a run
    failed). An invocation killed outright (``kill -9``, power loss) cannot end
    it: its lease expires and the next invocation ends it KILLED.
    """
    try:
        yield
    except BaseException as exc:
        status = tracking.KILLED if isinstance(exc, (KeyboardInterrupt, SystemExit)) else tracking.FAILED
        with contextlib.suppress(Exception):  # the store itself may be what failed: the lease runs out then
            if status == tracking.FAILED:
                tracker.set_tags(parent_run_id, {"error": f"{type(exc).__name__}: {exc}"[:5000]})
            tracker.end_run(parent_run_id, status)
        raise


def _run_jobs(
    config, registry, tracker, parent_run_id, specs, todo, reuse, finished_runs, outcomes_by_key,
    datasets, scorers, executor_obj, device, progress,
) -> StudyResult:
    """Hand the jobs to the executor, re-score finished runs, end the parent run; the outcomes in grid order."""

    worker = Worker(config, tracker.uri, tracker.experiment_id, device, progress)
    bar = StudyProgress(sum(s.steps for s in todo), enabled=progress)
    worker.bar = bar  # used when the executor runs jobs in this process
    worker._context(registry=registry, config=config, tracker=tracker, datasets=datasets, scorers=scorers)
    if len(todo) < len(specs):
        bar.message(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; skipping them")
    jobs = [RunJob(spec, parent_run_id, reuse.get(spec.run_key), i + 1, len(todo)) for i, spec in enumerate(todo)]
    # the study at a glance on the parent run, and the UI's first view: at the start, as runs finish, at the end
    overview = StudyOverview(tracker, parent_run_id, config, scorers, specs, outcomes_by_key)
    overview.write_view()
    overview.publish()
    completed = False
    try:
        for outcome in executor_obj.run(jobs, worker):
            outcomes_by_key[outcome.spec.run_key] = outcome
            if not getattr(executor_obj, "in_process", False):
                bar.message(f"[{len(outcomes_by_key)}/{len(specs)}] {outcome.status} {outcome.spec.run_name}")
            overview.changed()
        score_finished_runs(
            [(spec, finished_runs[spec.run_key]) for spec in specs if spec.run_key in finished_runs],
            worker._context(), outcomes_by_key, bar,
        )
        completed = True
    finally:
        bar.close()
        if not completed:  # interrupted or failed: what finished so far (best effort, the error goes on)
            overview.publish()
    missing = [s for s in specs if s.run_key not in outcomes_by_key]
    for spec in missing:  # an executor that lost a job (a crashed worker process)
        outcomes_by_key[spec.run_key] = RunOutcome(spec, "failed", error="the executor returned no result")
    outcomes = [outcomes_by_key[s.run_key] for s in specs]
    overview.publish(force=True)
    overview.write_view()  # now with the keys recorded by scorers that declare no headline
    failed = any(o.status == "failed" for o in outcomes)
    tracker.end_run(parent_run_id, tracking.FAILED if failed else tracking.FINISHED)
    return StudyResult(
        config, tracker.uri, tracker.experiment_id, parent_run_id, outcomes, headline_keys(config, scorers, outcomes)
    )
