"""Who may train a run: the per-run-key file lock and the MLflow lease, taken together.

A run is trained only by the process that holds its lock on this machine and
holds the lease on its MLflow run (:meth:`Tracker.claim_run
<disentbench.core.tracking.tracker.Tracker.claim_run>`), renewed by a
:class:`LeaseKeeper` heartbeat while it trains, evaluates and records. The
lock keeps two processes of one checkout apart at once; the lease keeps apart
invocations in different folders and on different machines that share one
tracking store. Solo and packed training both go through
:func:`lock_and_claim`, so the two can never disagree on what makes a run
theirs, or on the message a run skipped for either reason carries.
"""

from __future__ import annotations

import contextlib
import threading
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


class LeaseKeeper:
    """A daemon thread that renews this process's lease on some runs every few seconds.

    Each beat rewrites the heartbeat tag of every run it keeps, after checking
    that the lease is still this process's; a run whose lease another owner
    took (this process stalled past its lease) is reported in :attr:`lost` and
    no longer renewed. A failed beat (the store unreachable for a moment) is
    retried at the next one: the lease only lapses if beats fail for a whole
    lease duration.
    """

    def __init__(self, tracker: tracking.Tracker, run_ids: list[str], interval: float | None = None):
        self.tracker = tracker
        self.run_ids = list(run_ids)
        self.lost: set[str] = set()
        self.interval = interval or tracking.heartbeat_interval(tracking.lease_seconds())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="disentbench-lease", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def replace(self, old: str, new: str) -> None:
        """Keep ``new`` instead of ``old`` (a run replaced by a fresh one)."""
        with self._lock:
            self.run_ids = [new if r == old else r for r in self.run_ids]

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                run_ids = [r for r in self.run_ids if r not in self.lost]
            for run_id in run_ids:
                if self._stop.is_set():
                    return
                try:
                    if not self.tracker.heartbeat(run_id):
                        self.lost.add(run_id)
                except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                    pass


@contextlib.contextmanager
def keep_lease(tracker: tracking.Tracker, run_id: str) -> Iterator[LeaseKeeper]:
    """Renew this process's lease on ``run_id`` while the block runs."""
    keeper = LeaseKeeper(tracker, [run_id]).start()
    try:
        yield keeper
    finally:
        keeper.stop()


class LeaseLost(RuntimeError):
    """Another owner took this process's lease on a run (this process stalled past it): stop, record nothing."""


@dataclass
class RunRef:
    """A claimed run as its trainer sees it: the run id (which a restart from step 0 may replace) and its lease."""

    run_id: str
    keeper: LeaseKeeper | None = None

    @property
    def lost(self) -> bool:
        return self.keeper is not None and self.run_id in self.keeper.lost

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another owner holds the run now."""
        if self.lost:
            raise LeaseLost(f"run {self.run_id}: another owner took its lease")

    def replace(self, new_run_id: str) -> None:
        if self.keeper is not None:
            self.keeper.replace(self.run_id, new_run_id)
        self.run_id = new_run_id


@dataclass(frozen=True)
class Claim:
    """The result of :func:`lock_and_claim`: the claimed run's id and its lease keeper, or the outcome of a
    run skipped."""

    run_id: str | None
    skipped: RunOutcome | None = None
    keeper: LeaseKeeper | None = None

    def ref(self) -> RunRef:
        if self.run_id is None:
            raise RuntimeError("a skipped claim has no run")
        return RunRef(self.run_id, self.keeper)


def skip_reason(reason: str | None) -> str:
    """The results-table wording of a claim refused for ``reason`` (``done`` or ``owned by HOST:PID``)."""
    return reason or "claimed by another invocation"


@contextlib.contextmanager
def lock_and_claim(job: RunJob, config: StudyConfig, tracker: tracking.Tracker) -> Iterator[Claim]:
    """Lock ``job``'s run key, then take the lease on its MLflow run; both held until the block ends.

    Yields a :class:`Claim` with the run id (its lease renewed in the
    background until the block ends), or, when another process on this machine
    holds the lock, another owner's lease is alive, or the run already
    finished, with a ``skipped`` outcome instead (nothing claimed). The
    outcome's ``error`` is ``done`` or ``owned by HOST:PID``.
    """
    spec = job.spec
    checkpoint_dir = Path(config.training.checkpoint_dir) / spec.run_key
    with RunLock(checkpoint_dir.with_suffix(".lock")) as lock:
        if not lock.acquired:
            yield Claim(None, RunOutcome(spec, "skipped", error="owned by another process in this folder"))
            return
        claimed = tracker.claim_run(spec, job.parent_run_id, config.tracking.index_tag)
        if claimed.run_id is None:
            yield Claim(None, RunOutcome(spec, "skipped", error=skip_reason(claimed.reason)))
            return
        with keep_lease(tracker, claimed.run_id) as keeper:
            yield Claim(claimed.run_id, keeper=keeper)
