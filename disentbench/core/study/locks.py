"""Who may train a run: the per-run-key file lock and the MLflow claim, taken together.

A run is trained only by the process that holds its lock on this machine and
has claimed its MLflow run for this invocation. Solo and packed training both
go through :func:`lock_and_claim`, so the two can never disagree on what makes
a run theirs, or on the message a run skipped for either reason carries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from disentbench.core.config.schema import StudyConfig
from disentbench.core.study.jobs import RunJob, RunOutcome
from disentbench.core.tracking import tracker as tracking


class RunLock:
    """A non-blocking per-run-key file lock (``fcntl.flock``); released by the OS if the process dies.

    Two invocations on one machine never train the same run at once; a run
    left RUNNING by a killed process is recognised as free.
    """

    def __init__(self, path: Path):
        self.path = path
        self.acquired = False
        self._handle: TextIO | None = None

    def __enter__(self) -> RunLock:
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


@dataclass(frozen=True)
class Claim:
    """The result of :func:`lock_and_claim`: the claimed run's id, or the outcome of a run skipped."""

    run_id: str | None
    skipped: RunOutcome | None = None


@contextlib.contextmanager
def lock_and_claim(job: RunJob, config: StudyConfig, tracker: tracking.Tracker) -> Iterator[Claim]:
    """Lock ``job``'s run key, then claim its MLflow run; the lock is held until the block ends.

    Yields a :class:`Claim` with the run id, or, when another process on this
    machine holds the lock or another invocation owns the run, with a
    ``skipped`` outcome instead (nothing claimed).
    """
    spec = job.spec
    checkpoint_dir = Path(config.training.checkpoint_dir) / spec.run_key
    with RunLock(checkpoint_dir.with_suffix(".lock")) as lock:
        if not lock.acquired:
            yield Claim(None, RunOutcome(spec, "skipped", error="being trained by another process on this machine"))
            return
        run_id = tracker.claim_run(spec, job.parent_run_id, job.reuse_run_id, config.tracking.index_tag)
        if run_id is None:
            yield Claim(None, RunOutcome(spec, "skipped", error="claimed by another invocation"))
            return
        yield Claim(run_id)
