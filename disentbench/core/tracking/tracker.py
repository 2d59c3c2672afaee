"""MLflow tracking: one experiment per study, a parent run per invocation, a child run per RunSpec.

Everything goes through an explicit ``MlflowClient`` with explicit run ids (the
fluent API is global and not thread-safe). The default store is a SQLite file
``mlflow.db`` in the working directory (MLflow's own default since 3.7), with
artifacts under ``./mlruns``; any tracking URI works by configuration
(``tracking.uri``, ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disentbench.core.config.grid import RunSpec
from disentbench.core.messages import first_line

FINISHED, RUNNING, FAILED, KILLED, PENDING = "FINISHED", "RUNNING", "FAILED", "KILLED", "PENDING"
STALE = "STALE"  # RUNNING in MLflow, but its owner is gone (lease expired): not a status MLflow knows

TAG_RUN_KEY = "run_key"
TAG_STUDY = "study"
TAG_KIND = "disentbench.kind"
#: MLflow 3's UI opens an experiment with this tag value in its classic model-training view, not GenAI's.
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"

# The lease of a run (child or study): who trains it, and until when that holds. See Lease.
TAG_OWNER = "disentbench.owner"  # id of the process that holds the lease
TAG_OWNER_HOST = "disentbench.owner_host"
TAG_OWNER_PID = "disentbench.owner_pid"
TAG_HEARTBEAT = "disentbench.heartbeat"  # unix seconds of the owner's last heartbeat
TAG_LEASE_SECONDS = "disentbench.lease_seconds"  # how long a heartbeat holds
TAG_CLAIM_PREFIX = "disentbench.claim."  # + owner id: a claim in progress ("UNIX_SECONDS HOST:PID")
TAG_REPLACES = "disentbench.replaces"  # a run restarted from step 0: the id of the run it replaced
TAG_REPLACED_BY = "disentbench.replaced_by"

LEASE_ENV = "DISENTBENCH_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
#: How long a claimant waits between writing its claim and reading all claims back. A claimant whose
#: read-then-write took longer than this starts over, which is what makes two winners impossible.
CLAIM_SETTLE_SECONDS = 0.5
CLAIM_ATTEMPTS = 8


def quiet_mlflow_logs() -> None:
    """Schema migrations and store set-up log at INFO; users need none of it."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_tracking_uri(configured: str | None = None) -> str:
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = str(value)
    return out


def run_params(spec: RunSpec) -> dict[str, str]:
    params = {"dataset": spec.dataset, "model": spec.model, "seed": str(spec.seed)}
    flatten("dataset", spec.dataset_params, params)
    flatten("model", spec.model_params, params)
    params["training.steps"] = str(spec.steps)
    params["training.batch_size"] = str(spec.batch_size)
    return params


class TrackingError(ValueError):
    """The tracking store cannot be used (bad URI, unreachable server)."""


# -- leases ------------------------------------------------------------------------
def lease_seconds() -> float:
    """The lease duration: ``$DISENTBENCH_LEASE_SECONDS`` or 60 s; ValueError (one line) for a bad value."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 1.0 and value < 10**7):
        raise ValueError(f"${LEASE_ENV}={text!r} is not a lease duration; use a number of seconds of at least 1, e.g. 60")
    return value


def heartbeat_interval(lease: float) -> float:
    """How often an owner renews its lease: a quarter of it, at most every 10 s."""
    return min(10.0, lease / 4)


@dataclass(frozen=True)
class Owner:
    """This process as a lease owner: a random id (unique per process), the host name and the pid."""

    id: str
    host: str
    pid: int

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"


_OWNER: Owner | None = None


def this_owner() -> Owner:
    """The owner identity of the calling process (a new one after a fork or in a spawned worker)."""
    global _OWNER
    if _OWNER is None or _OWNER.pid != os.getpid():
        _OWNER = Owner(uuid.uuid4().hex, socket.gethostname(), os.getpid())
    return _OWNER


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process), or we cannot tell: assume alive
    return True


@dataclass(frozen=True)
class Lease:
    """A run's lease as its tags record it: owner, host, pid, last heartbeat and duration.

    It is alive while the run is RUNNING and the last heartbeat is younger than
    the lease duration; on the owner's own host it dies at once with the owner
    process (its pid no longer exists), so a rerun after ``kill -9`` on the same
    machine takes the run over without waiting for the lease to run out.
    """

    owner: str
    host: str
    pid: int
    heartbeat: float
    seconds: float

    @classmethod
    def of(cls, run) -> Lease | None:
        tags = run.data.tags
        if TAG_OWNER not in tags:
            return None
        try:
            return cls(
                tags[TAG_OWNER], tags.get(TAG_OWNER_HOST, ""), int(tags.get(TAG_OWNER_PID, "0") or 0),
                float(tags.get(TAG_HEARTBEAT, "0") or 0), float(tags.get(TAG_LEASE_SECONDS, "0") or 0),
            )
        except ValueError:
            return None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"

    def expired(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.heartbeat + self.seconds < now:
            return True
        return self.host == socket.gethostname() and self.pid > 0 and not _pid_alive(self.pid)


def live_lease(run) -> Lease | None:
    """The run's lease if someone holds it now (the run is RUNNING and its lease has not expired)."""
    if run.info.status != RUNNING:
        return None
    lease = Lease.of(run)
    return lease if lease is not None and not lease.expired() else None


def run_state(run) -> str:
    """A run's status as ``status`` shows it: MLflow's, but a RUNNING run whose owner is gone is STALE."""
    if run.info.status == RUNNING and live_lease(run) is None:
        return STALE
    return run.info.status


def lease_tags(owner: Owner, seconds: float, now: float | None = None) -> dict[str, str]:
    return {
        TAG_OWNER: owner.id,
        TAG_OWNER_HOST: owner.host,
        TAG_OWNER_PID: str(owner.pid),
        TAG_HEARTBEAT: f"{time.time() if now is None else now:.3f}",
        TAG_LEASE_SECONDS: f"{seconds:g}",
    }


def _claims(run, fresh_within: float) -> list[tuple[float, str, str]]:
    """Claims in progress on ``run`` younger than ``fresh_within`` s: (time, owner id, HOST:PID), oldest first."""
    now = time.time()
    found = []
    for key, value in run.data.tags.items():
        if not key.startswith(TAG_CLAIM_PREFIX):
            continue
        stamp, _, label = value.partition(" ")
        try:
            when = float(stamp)
        except ValueError:
            continue
        if now - when < fresh_within and not _owner_gone(label):
            found.append((when, key[len(TAG_CLAIM_PREFIX) :], label))
    return sorted(found)


def _owner_gone(label: str) -> bool:
    """Whether ``HOST:PID`` names a process of this host that no longer exists (killed mid-claim)."""
    host, _, pid = label.rpartition(":")
    try:
        number = int(pid)
    except ValueError:
        return False
    return host == socket.gethostname() and number > 0 and not _pid_alive(number)


@dataclass(frozen=True)
class ClaimResult:
    """What :meth:`Tracker.claim_run` got: the run id, or why not (``done`` or ``owned by HOST:PID``)."""

    run_id: str | None
    reason: str | None = None


_TRANSIENT = ("database is locked", "database table is locked", "deadlock", "connection reset")


class _RetryingClient:
    """An MlflowClient whose calls retry transient store errors with exponential backoff.

    SQLite already waits 20 s on a lock (MLflow sets busy_timeout); this covers
    what slips through under many concurrent writers, and flaky servers.
    """

    def __init__(self, client, attempts: int = 8, first_delay: float = 0.05):
        self._client = client
        self._attempts = attempts
        self._first_delay = first_delay

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            delay = self._first_delay
            for attempt in range(self._attempts):
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    text = str(exc).lower()
                    if attempt == self._attempts - 1 or not any(t in text for t in _TRANSIENT):
                        raise
                    time.sleep(delay * (1 + random.random()))
                    delay *= 2

        return call


class Tracker:
    def __init__(self, uri: str | None, experiment: str):
        from mlflow.tracking import MlflowClient

        quiet_mlflow_logs()  # after the import: importing mlflow configures its own loggers

        self.uri = resolve_tracking_uri(uri)
        self.experiment_name = experiment
        check_tracking_uri(self.uri)
        try:
            with _sqlite_init_lock(self.uri) as database:
                if database is not None and _interrupted_sqlite_init(database):
                    aside = database.with_name(f"{database.name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
                    database.rename(aside)
                    for suffix in ("-journal", "-wal", "-shm"):  # never leave a stale journal for the new store
                        sibling = database.with_name(database.name + suffix)
                        if sibling.exists():
                            sibling.rename(aside.with_name(aside.name + suffix))
                    print(
                        f"disentbench: {database} was left half-created by an interrupted start (no experiment, "
                        f"no run in it); moved it to {aside.name} and creating a new one",
                        file=sys.stderr,
                    )
                self.client = _RetryingClient(MlflowClient(tracking_uri=self.uri))
                if database is not None:
                    # create (or finish checking) the store's tables while holding the lock
                    self.client.search_experiments(max_results=1)
        except Exception as exc:
            raise TrackingError(
                f"cannot use tracking URI {self.uri!r}: {first_line(exc)}; use sqlite:///PATH, http(s)://HOST:PORT "
                "or a database URI"
            ) from None
        self._experiment_id: str | None = None

    # -- experiment and runs ---------------------------------------------------
    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create_experiment()
        return self._experiment_id

    def _lookup_experiment(self):
        try:
            return self.client.get_experiment_by_name(self.experiment_name)
        except Exception as exc:
            raise TrackingError(
                f"cannot use tracking URI {self.uri!r}: {first_line(exc)}; check tracking.uri, --tracking-uri "
                "or $MLFLOW_TRACKING_URI"
            ) from None

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        existing = self._lookup_experiment()
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                self.client.restore_experiment(existing.experiment_id)
            if TAG_EXPERIMENT_KIND not in existing.tags:  # made before disentbench tagged its experiments
                self.client.set_experiment_tag(existing.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            return existing.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except MlflowException as exc:  # another process created it first, or MLflow refused the name
            raced = self.client.get_experiment_by_name(self.experiment_name)
            if raced is None:
                raise TrackingError(
                    f"MLflow cannot create experiment {self.experiment_name[:80]!r}: {first_line(exc)}"
                ) from None
            return raced.experiment_id

    def existing_experiment_id(self) -> str | None:
        """The experiment's id if it exists, without creating it (for read-only commands)."""
        existing = self._lookup_experiment()
        return existing.experiment_id if existing is not None else None

    def search(self, filter_string: str, experiment_id: str | None = None) -> list:
        experiment_id = experiment_id or self.experiment_id
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def runs_by_key(self, experiment_id: str | None = None) -> dict[str, list]:
        """All child runs of the experiment grouped by run key."""
        grouped: dict[str, list] = {}
        for run in self.search(f"tags.`{TAG_KIND}` = 'run'", experiment_id):
            grouped.setdefault(run.data.tags.get(TAG_RUN_KEY, ""), []).append(run)
        return grouped

    def start_study_run(self, study: str, num_runs: int, config_path: Path | None = None) -> str:
        """The invocation's parent run, with this process's lease on it (renewed by the caller's heartbeat)."""
        run = self.client.create_run(
            self.experiment_id,
            tags={
                TAG_KIND: "study", TAG_STUDY: study, "disentbench.version": _version(),
                **lease_tags(this_owner(), lease_seconds()),
            },
            run_name=f"{study} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        )
        self.client.log_param(run.info.run_id, "num_runs", num_runs)
        if config_path is not None:
            self.client.log_artifact(run.info.run_id, str(config_path))
        return run.info.run_id

    def end_stale_study_runs(self) -> list[str]:
        """Mark KILLED every study (parent) run left RUNNING by an invocation whose lease expired; their ids."""
        ended = []
        for run in self.search(f"tags.`{TAG_KIND}` = 'study' and attributes.status = 'RUNNING'"):
            if live_lease(run) is None:
                self.client.set_terminated(run.info.run_id, status=KILLED)
                ended.append(run.info.run_id)
        return ended

    def _run_tags(self, spec: RunSpec, parent_run_id: str, index_tag: str | None) -> dict[str, str]:
        tags = {
            PARENT_TAG: parent_run_id,
            TAG_KIND: "run",
            TAG_RUN_KEY: spec.run_key,
            TAG_STUDY: spec.study,
            "model": spec.model,
            "dataset": spec.dataset,
            "seed": str(spec.seed),
            "disentbench.version": _version(),
        }
        if index_tag:
            tags[index_tag] = str(spec.index)
        return tags

    def _create_run(self, spec: RunSpec, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=spec.run_name)
        self.log_params(run.info.run_id, run_params(spec))
        return run.info.run_id

    def runs_of_key(self, run_key: str) -> list:
        """The active child runs of one run key, canonical first (oldest start time, then run id)."""
        runs = self.search(f"tags.`{TAG_RUN_KEY}` = '{run_key}' and tags.`{TAG_KIND}` = 'run'")
        return sorted(
            (r for r in runs if r.info.lifecycle_stage == "active"), key=lambda r: (r.info.start_time or 0, r.info.run_id)
        )

    def claim_run(
        self, spec: RunSpec, parent_run_id: str, index_tag: str | None = None, settle: float | None = None
    ) -> ClaimResult:
        """Take the lease on the one MLflow run of ``spec.run_key`` (creating the run if there is none).

        A run whose lease is alive (someone trains it) or that FINISHED is left
        alone (``reason`` says which); any other state (FAILED, KILLED, RUNNING
        with an expired lease, a fresh key) is claimed. MLflow has no
        compare-and-set, so a claim is a protocol over tags:

        1. read the key's runs; stop if one finished, or has a live lease or a
           fresh claim of someone else;
        2. write a claim tag (or, for a new key, create the run carrying the
           claim and the lease);
        3. if step 1's read to step 2's write took longer than ``settle`` seconds,
           withdraw and start over;
        4. wait ``settle`` seconds, read again: the oldest fresh claim wins (for
           a new key: the canonical run, oldest start time then run id); the
           winner writes its lease, then drops its claim tag.

        Two claimants that both pass step 3 see each other's claims in step 4
        and pick the same winner; a claimant that did not see another's claim
        must have read before that claim was written and written after it was
        read back, so its step 3 took longer than ``settle`` and it started over.
        """
        settle = CLAIM_SETTLE_SECONDS if settle is None else settle
        owner, seconds = this_owner(), lease_seconds()
        claim_key = TAG_CLAIM_PREFIX + owner.id
        tags = self._run_tags(spec, parent_run_id, index_tag)
        for attempt in range(CLAIM_ATTEMPTS):
            if attempt:
                time.sleep(settle * random.uniform(0.5, 1.5) * min(attempt, 4))
            started = time.monotonic()
            runs = self.runs_of_key(spec.run_key)
            busy = self._busy(runs, owner, seconds)
            if busy is not None:
                return ClaimResult(None, busy)
            if not runs:
                run_id = self._create_run(
                    spec, {**tags, **lease_tags(owner, seconds), claim_key: f"{time.time():.3f} {owner.label}"}
                )
                if time.monotonic() - started > settle:
                    self.client.delete_run(run_id)
                    continue
                time.sleep(settle)
                runs = self.runs_of_key(spec.run_key)
                if not runs or runs[0].info.run_id != run_id:
                    self.client.delete_run(run_id)  # a rival's run of this key is the one run: claim that one
                    continue
                self.client.delete_tag(run_id, claim_key)
                return ClaimResult(run_id)
            target = runs[0].info.run_id
            self.client.set_tag(target, claim_key, f"{time.time():.3f} {owner.label}")
            if time.monotonic() - started > settle:
                self._drop_claim(target, claim_key)
                continue
            time.sleep(settle)
            run = self.client.get_run(target)
            busy = self._busy([run], owner, seconds)
            claims = _claims(run, seconds)
            if busy is None and (not claims or claims[0][1] != owner.id):
                busy = f"owned by {claims[0][2]}" if claims else "claimed by another invocation"
            if busy is not None:
                self._drop_claim(target, claim_key)
                return ClaimResult(None, busy)
            self.set_tags(target, {**tags, **lease_tags(owner, seconds)})  # the lease first, then drop the claim
            self.client.update_run(target, status=RUNNING)
            self._drop_claim(target, claim_key)
            return ClaimResult(target)
        return ClaimResult(None, f"claimed by another invocation (no claim settled in {CLAIM_ATTEMPTS} tries)")

    def _busy(self, runs: list, owner: Owner, seconds: float) -> str | None:
        """Why the key of ``runs`` is not ours to claim (done, leased or being claimed by another), or None."""
        if any(r.info.status == FINISHED for r in runs):
            return "done"
        for run in runs:
            lease = live_lease(run)
            if lease is not None and lease.owner != owner.id:
                return f"owned by {lease.label}"
            for _, claimant, label in _claims(run, seconds):
                if claimant != owner.id:
                    return f"owned by {label}"
        return None

    def _drop_claim(self, run_id: str, claim_key: str) -> None:
        with contextlib.suppress(Exception):  # already gone: nothing to drop
            self.client.delete_tag(run_id, claim_key)

    def heartbeat(self, run_id: str) -> bool:
        """Renew this process's lease on ``run_id``; False (and nothing written) if another owner holds it now."""
        run = self.client.get_run(run_id)
        if run.data.tags.get(TAG_OWNER) != this_owner().id:
            return False
        self.client.set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.3f}")
        return True

    def release_lease(self, run_id: str) -> bool:
        """Hand ``run_id`` on: end this process's lease now (the run stays RUNNING, claimable at once).

        For a run trained here and evaluated by another process or node (a
        cluster training task's trained run; the local executor's evaluation
        pool), which could not claim it while this lease lasts, even from a live
        process of this host. The owner becomes ``released``, so a lease keeper
        still running stops renewing it. False (and nothing written) if another
        owner holds the run.
        """
        run = self.client.get_run(run_id)
        if run.data.tags.get(TAG_OWNER) != this_owner().id:
            return False
        self.set_tags(run_id, {TAG_OWNER: "released", TAG_HEARTBEAT: "0"})
        return True

    def replace_run(self, run_id: str) -> str:
        """A fresh run for ``run_id``'s key that takes over its tags, params and lease; the old run is deleted.

        For a run restarted from step 0 whose old curve must not mix with the
        new one. The old run goes to MLflow's trash (restorable) with a
        ``disentbench.replaced_by`` tag; the new one carries ``disentbench.replaces``.
        The new run exists before the old one is deleted, and carries this
        process's lease, so the key is never without a leased run.
        """
        old = self.client.get_run(run_id)
        keep = {k: v for k, v in old.data.tags.items() if not k.startswith(("mlflow.", TAG_CLAIM_PREFIX))}
        if PARENT_TAG in old.data.tags:
            keep[PARENT_TAG] = old.data.tags[PARENT_TAG]
        keep.update(lease_tags(this_owner(), lease_seconds()))
        keep[TAG_REPLACES] = run_id
        keep.pop("error", None)
        keep.pop("resumed_from_step", None)
        run = self.client.create_run(self.experiment_id, tags=keep, run_name=old.info.run_name)
        new_id = run.info.run_id
        self.log_params(new_id, dict(old.data.params))
        self.client.set_tag(run_id, TAG_REPLACED_BY, new_id)
        self.client.delete_run(run_id)
        return new_id

    # -- logging -----------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Upload the file ``path`` into the run's artifacts, under the folder ``artifact_path``.

        ``artifact_path`` must stay inside the run's artifact directory (see
        :func:`safe_artifact_path`); the file keeps its own base name.
        """
        self.client.log_artifact(run_id, str(path), safe_artifact_path(artifact_path))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def end_run(self, run_id: str, status: str = FINISHED) -> None:
        self.client.set_terminated(run_id, status=status)


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative ``sqlite:///PATH`` made absolute (from this process's working directory), for a
    process that opens it elsewhere (a cluster task starts in another directory); other URIs unchanged."""
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    _, question, query = uri.partition("?")
    return f"sqlite:///{path.resolve()}{question}{query}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (None for other URIs)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(rest).expanduser() if rest and rest != ":memory:" else None


@contextlib.contextmanager
def _sqlite_init_lock(uri: str):
    """Serialise the creation of a local SQLite store between processes; yields its path (None if not SQLite).

    MLflow creates a new store's tables in a few dozen migrations. A process
    killed in the middle leaves a file that MLflow can neither use nor finish
    ("table ... already exists"); holding this lock (a hidden ``.NAME.lock``
    next to the database, released by the OS if the process dies) while the
    store is created lets the next process tell such a leftover from a store
    that another process is creating right now.
    """
    path = _sqlite_path(uri)
    if path is None:
        yield None
        return
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock, no recovery
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(path.with_name(f".{path.name}.lock"), "a+")
    except OSError:  # e.g. reading a store in a read-only folder: no lock, and nothing to recover there
        yield None
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _interrupted_sqlite_init(path: Path) -> bool:
    """Whether ``path`` is an MLflow store whose creation was interrupted: tables but no experiment at all.

    MLflow creates the Default experiment right after its last migration, and
    never removes its row (deleting an experiment only marks it), so a store
    with MLflow tables and an empty ``experiments`` table holds no data: it can
    be moved aside without losing anything.
    """
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        connection = _open_recovered(path)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables & {"experiments", "alembic_version", "runs", "metrics"}:
                return False  # not (yet) an MLflow store: MLflow creates it from scratch
            if "experiments" not in tables:
                return True
            if connection.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]:
                return False
            return "runs" not in tables or connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        finally:
            connection.close()
    except sqlite3.Error:
        return False  # let MLflow say what is wrong with it


def _open_recovered(path: Path):
    """A connection to ``path`` that sees it as any writer will: after SQLite rolls back a hot journal.

    A process killed inside one of MLflow's migrations leaves a ``-journal``
    next to the store. A read-only connection cannot roll it back and fails
    ("attempt to write a readonly database"); a read-write one rolls it back on
    its first read, as MLflow's own connection would a moment later. Stores in a
    read-only place are still opened read-only.
    """
    import sqlite3

    try:
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    except sqlite3.Error:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return connection
    except sqlite3.Error:
        connection.close()
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def check_sqlite_uri(uri: str) -> None:
    """Fail fast, in one line, on a ``sqlite:`` URI that cannot work (MLflow would retry, then print pages).

    In-memory stores (``sqlite://``) are refused too: a study's results would
    vanish with the process, and worker processes would each see another store.
    """
    if not uri.startswith("sqlite:"):
        return
    rest = uri[len("sqlite:") :].split("?", 1)[0]
    if not rest.startswith("///") or rest[3:] in ("", ":memory:"):
        raise TrackingError(
            f"tracking URI {uri!r} is an in-memory SQLite store that keeps nothing after the study; "
            "use sqlite:///PATH/mlflow.db"
        )
    path = Path(rest[3:]).expanduser()
    if path.is_dir():
        raise TrackingError(f"tracking URI {uri!r}: {path} is a folder, not a database file; use sqlite:///{path}/mlflow.db")
    if path.is_file():
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header and header != b"SQLite format 3\x00":
            raise TrackingError(f"tracking URI {uri!r}: {path} exists and is not an SQLite database")
        return
    from disentbench.core.paths import unwritable_reason

    # a real probe: os.access says yes to root on read-only and virtual file systems (/proc), where
    # MLflow would then retry for minutes before failing
    reason = unwritable_reason(path, folder=False)
    if reason is not None:
        raise TrackingError(f"tracking URI {uri!r}: {reason}; use sqlite:///PATH/mlflow.db in a writable folder")


#: How long the connect probe of a tracking server waits (the issue's bound: fail within ~15 s).
CONNECT_TIMEOUT_S = 5.0
_KNOWN_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks", "uc")
_USE = "use sqlite:///PATH/mlflow.db, http(s)://HOST:PORT or a database URI"


def check_tracking_uri(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, in one line, on a tracking URI that cannot work, before anything is created.

    ``sqlite:`` URIs get :func:`check_sqlite_uri`; an unknown scheme or a URI
    with none is refused (MLflow would answer with its model registry's
    message, or make a folder of that name); an ``http(s)`` server must accept
    a TCP connection within ``timeout`` seconds (MLflow's client retries an
    unreachable server for minutes).
    """
    import socket
    from urllib.parse import urlsplit

    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme == "sqlite":
        check_sqlite_uri(uri)
        return
    if scheme not in _KNOWN_SCHEMES or (len(scheme) == 1 and os.name == "nt"):
        what = f"unknown scheme {scheme + ':'!r}" if scheme else "no scheme"
        raise TrackingError(f"cannot use tracking URI {uri!r}: unsupported URI ({what}); {_USE}")
    if scheme not in ("http", "https"):
        return
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise TrackingError(f"cannot use tracking URI {uri!r}: Invalid url ({exc}); {_USE}") from None
    if not host:
        raise TrackingError(f"cannot use tracking URI {uri!r}: Invalid url (no host); {_USE}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        raise TrackingError(
            f"cannot use tracking URI {uri!r}: the tracking server at {host}:{port} is unreachable ({why}, "
            f"tried for up to {timeout:g} s); start it, or check tracking.uri, --tracking-uri or $MLFLOW_TRACKING_URI"
        ) from None


def open_existing(uri: str | None, experiment: str) -> tuple[Tracker | None, str | None]:
    """For read-only commands (status, compare, analyze, ui): ``(tracker, experiment id)``, creating nothing.

    A local ``sqlite:///`` store that does not exist yet gives ``(None, None)``:
    opening it with MLflow would create an empty store (and its lock file). The
    experiment id is None when the store has no such experiment. Raises
    ``TrackingError`` (one line) for a store that cannot work.
    """
    uri = resolve_tracking_uri(uri)
    check_sqlite_uri(uri)
    path = _sqlite_path(uri)
    if path is not None and not path.exists():
        return None, None
    tracker = Tracker(uri, experiment)
    return tracker, tracker.existing_experiment_id()


def safe_artifact_path(artifact_path: str | None) -> str | None:
    """``artifact_path`` as a relative POSIX folder inside a run's artifacts; ValueError if it could escape.

    Rejected: absolute paths (``/x``, ``\\x``, ``C:x``), ``..`` components,
    backslashes (a separator on Windows stores), NUL and other control
    characters. ``None`` and ``""`` mean the artifact root; ``.`` and empty
    components are dropped (``images//./a`` is ``images/a``).
    """
    if artifact_path is None:
        return None
    text = str(artifact_path)

    def bad(why: str) -> ValueError:
        return ValueError(f"artifact path {text!r} {why}; use a relative folder such as 'images'")

    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise bad("contains a control character")
    if "\\" in text:
        raise bad("contains a backslash")
    if text.startswith("/") or (len(text) >= 2 and text[1] == ":" and text[0].isalpha()) or text.startswith("~"):
        raise bad("is absolute and would escape the run's artifact directory")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise bad("contains '..' and could escape the run's artifact directory")
    return "/".join(parts) or None


def status_of(runs: Iterable) -> str:
    """Summarise the runs recorded for one run key: finished beats running beats stale beats failed.

    A RUNNING run whose lease expired (its owner died or lost the store) is STALE.
    """
    statuses = {run_state(run) for run in runs}
    for status in (FINISHED, RUNNING, STALE, FAILED, KILLED):
        if status in statuses:
            return status
    return PENDING


def _version() -> str:
    from disentbench.version import __version__

    return __version__
