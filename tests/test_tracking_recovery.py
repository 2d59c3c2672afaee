"""A local MLflow store whose creation was interrupted (a kill during MLflow's migrations) is recovered.

Such a file has MLflow tables but no experiment yet (MLflow adds the Default
experiment only after its last migration). MLflow itself can neither use nor
finish it, so every later study in that folder would fail; disentbench moves it
aside (nothing in it is lost) and creates a new store. A store that holds any
experiment is never touched.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from disentbench.core.tracking.tracker import _interrupted_sqlite_init

#: An early MLflow schema revision: a store stamped with it looks half-migrated.
EARLY_REVISION = "a8c4a736bde6"


def _open_in_new_process(path) -> subprocess.CompletedProcess:
    """What the next ``disentbench`` invocation does first (a new process: MLflow caches engines per process)."""
    code = (
        "import sys; from disentbench.core.tracking.tracker import Tracker; "
        "t = Tracker(sys.argv[1], 'study'); print(t.experiment_id); "
        "print(sorted(e.name for e in t.client.search_experiments()))"
    )
    return subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], capture_output=True, text=True, timeout=300)


def _store(path, experiments: bool):
    """A complete store, then made to look like an interrupted creation (or an old store with data)."""
    assert _open_in_new_process(path).returncode == 0  # creates the store and one experiment
    connection = sqlite3.connect(path)
    if not experiments:
        connection.execute("DELETE FROM experiments")
    connection.execute("UPDATE alembic_version SET version_num = ?", (EARLY_REVISION,))
    connection.commit()
    connection.close()


def test_interrupted_store_is_moved_aside_and_replaced(tmp_path):
    path = tmp_path / "mlflow.db"
    _store(path, experiments=False)
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    with pytest.raises(Exception, match="schema|already exists"):  # what a user got before: MLflow refuses it
        MlflowClient(tracking_uri=f"sqlite:///{copy}").search_experiments()
    copy.unlink()
    assert _interrupted_sqlite_init(path)
    before = path.read_bytes()

    opened = _open_in_new_process(path)
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert opened.stdout.splitlines()[-1] == "['Default', 'study']"  # the new store works
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("mlflow.db.interrupted-")]
    assert len(aside) == 1 and aside[0].read_bytes() == before  # moved, not deleted or changed
    assert "half-created by an interrupted start" in opened.stderr and aside[0].name in opened.stderr
    assert not _interrupted_sqlite_init(path)


def test_store_with_an_experiment_is_never_moved(tmp_path):
    path = tmp_path / "mlflow.db"
    _store(path, experiments=True)
    assert not _interrupted_sqlite_init(path)
    opened = _open_in_new_process(path)
    assert opened.returncode != 0 and "cannot use tracking URI" in opened.stderr
    assert path.exists() and not [p for p in tmp_path.iterdir() if "interrupted" in p.name]


def test_non_mlflow_and_empty_files_are_left_to_mlflow(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert not _interrupted_sqlite_init(empty)
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE notes (text TEXT)")
    connection.commit()
    connection.close()
    assert not _interrupted_sqlite_init(other)


def test_a_store_whose_lock_file_cannot_be_made_still_opens(tmp_path):
    """Reading a store in a folder where the lock cannot be created (here: a folder in its place) still works."""
    path = tmp_path / "mlflow.db"
    assert _open_in_new_process(path).returncode == 0
    (tmp_path / ".mlflow.db.lock").unlink()
    (tmp_path / ".mlflow.db.lock").mkdir()
    opened = _open_in_new_process(path)
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert opened.stdout.splitlines()[-1] == "['Default', 'study']"



def test_store_killed_inside_a_migration_with_a_hot_journal_is_recovered(tmp_path):
    """The kill CI hit: mid-transaction, leaving ``mlflow.db-journal``. A read-only look cannot roll that
    journal back (SQLite refuses), so the store used to be handed to MLflow, which failed on every rerun."""
    path = tmp_path / "mlflow.db"
    _store(path, experiments=False)
    writer = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA cache_size = 1')\n"  # spill to the file mid-transaction, as a long migration does
        "c.execute('BEGIN')\n"
        "c.execute('CREATE TABLE half_migrated (id INTEGER, payload TEXT)')\n"
        "c.executemany('INSERT INTO half_migrated VALUES (?, ?)', ((i, 'x' * 200) for i in range(2000)))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", writer, str(path)], capture_output=True, timeout=120)
    assert killed.returncode == -9
    journal = tmp_path / "mlflow.db-journal"
    assert journal.exists() and journal.stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError):  # the hot journal: what the read-only check used to meet
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    opened = _open_in_new_process(path)
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert opened.stdout.splitlines()[-1] == "['Default', 'study']"
    assert "half-created by an interrupted start" in opened.stderr
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("mlflow.db.interrupted-") and not p.name.endswith("-journal")]
    rolled_back = sqlite3.connect(aside)
    tables = {row[0] for row in rolled_back.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    rolled_back.close()
    assert "half_migrated" not in tables and "experiments" in tables  # the killed transaction was rolled back, not kept
    assert not journal.exists()  # no journal of the old store left beside the new one
