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
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from disentbench.core.config.grid import RunSpec
from disentbench.core.messages import first_line

FINISHED, RUNNING, FAILED, KILLED, PENDING = "FINISHED", "RUNNING", "FAILED", "KILLED", "PENDING"

TAG_RUN_KEY = "run_key"
TAG_STUDY = "study"
TAG_KIND = "disentbench.kind"
#: MLflow 3's UI opens an experiment with this tag value in its classic model-training view, not GenAI's.
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TAG_OWNER = "disentbench.owner"  # token of the invocation currently training a run  # "study" for parent runs, "run" for children
PARENT_TAG = "mlflow.parentRunId"


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
        run = self.client.create_run(
            self.experiment_id,
            tags={TAG_KIND: "study", TAG_STUDY: study, "disentbench.version": _version()},
            run_name=f"{study} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        )
        self.client.log_param(run.info.run_id, "num_runs", num_runs)
        if config_path is not None:
            self.client.log_artifact(run.info.run_id, str(config_path))
        return run.info.run_id

    def start_run(
        self, spec: RunSpec, parent_run_id: str, reuse_run_id: str | None = None, index_tag: str | None = None
    ) -> str:
        """A child run for ``spec``; an unfinished run of the same key is reused, never duplicated."""
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
        if reuse_run_id is not None:
            for key, value in tags.items():
                self.client.set_tag(reuse_run_id, key, value)
            self.client.update_run(reuse_run_id, status=RUNNING)
            return reuse_run_id
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=spec.run_name)
        self.log_params(run.info.run_id, run_params(spec))
        return run.info.run_id

    def claim_run(
        self, spec: RunSpec, parent_run_id: str, reuse_run_id: str | None = None, index_tag: str | None = None
    ) -> str | None:
        """Start (or continue) the one MLflow run of ``spec.run_key``; None if another invocation owns it.

        Optimistic claim: create the run, then look for other live runs of the
        same key. The oldest (start time, then run id) wins; a loser deletes its
        own fresh run, so racing invocations never leave two runs for one key.
        A reused run (interrupted earlier) is taken over by writing an owner
        token and reading it back: the last writer owns it.
        """
        if reuse_run_id is not None:
            token = uuid.uuid4().hex
            self.client.set_tag(reuse_run_id, TAG_OWNER, token)
            time.sleep(0.2)
            if self.client.get_run(reuse_run_id).data.tags.get(TAG_OWNER) != token:
                return None
            return self.start_run(spec, parent_run_id, reuse_run_id, index_tag)
        run_id = self.start_run(spec, parent_run_id, None, index_tag)
        rivals = [
            r
            for r in self.search(f"tags.`{TAG_RUN_KEY}` = '{spec.run_key}'")
            if r.info.lifecycle_stage == "active" and r.info.status != FAILED and r.info.status != KILLED
        ]
        winner = min(rivals, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
        if winner is not None and winner.info.run_id != run_id:
            self.client.delete_run(run_id)
            return None
        return run_id

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
    """Summarise the runs recorded for one run key: finished beats running beats failed."""
    statuses = {run.info.status for run in runs}
    for status in (FINISHED, RUNNING, FAILED, KILLED):
        if status in statuses:
            return status
    return PENDING


def _version() -> str:
    from disentbench.version import __version__

    return __version__
