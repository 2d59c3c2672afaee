"""Run ownership as a lease in MLflow: a live lease is respected, an expired one taken over, FAILED runs reused."""

import socket
import subprocess
import sys
import time

import pytest
from helpers import TINY_STUDY

from disentbench.core.config.grid import expand_grid
from disentbench.core.config.schema import StudyConfig
from disentbench.core.registry import build_registry
from disentbench.core.tracking import tracker as tracking


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "CLAIM_SETTLE_SECONDS", 0.05)
    monkeypatch.setenv(tracking.LEASE_ENV, "5")
    config = StudyConfig.model_validate(TINY_STUDY)
    spec = expand_grid(config, build_registry(load_entry_points=False))[0]
    tracker = tracking.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "leases")
    parent = tracker.start_study_run("leases", 1)
    return tracker, spec, parent


def _foreign_lease(tracker, run_id, heartbeat):
    tracker.set_tags(run_id, {
        tracking.TAG_OWNER: "someone-else", tracking.TAG_OWNER_HOST: "other-host", tracking.TAG_OWNER_PID: "4242",
        tracking.TAG_HEARTBEAT: f"{heartbeat:.3f}", tracking.TAG_LEASE_SECONDS: "5",
    })  # fmt: skip
    tracker.client.update_run(run_id, status=tracking.RUNNING)


def test_a_live_foreign_lease_is_never_taken_and_an_expired_one_is(setup):
    tracker, spec, parent = setup
    first = tracker.claim_run(spec, parent)
    assert first.run_id is not None
    _foreign_lease(tracker, first.run_id, time.time())
    refused = tracker.claim_run(spec, parent)
    assert refused.run_id is None and refused.reason == "owned by other-host:4242"
    assert tracking.status_of(tracker.runs_of_key(spec.run_key)) == tracking.RUNNING
    _foreign_lease(tracker, first.run_id, time.time() - 60)  # the owner stopped beating a minute ago
    assert tracking.status_of(tracker.runs_of_key(spec.run_key)) == tracking.STALE
    taken = tracker.claim_run(spec, parent)
    assert taken.run_id == first.run_id  # the same MLflow run, now ours
    assert tracker.client.get_run(first.run_id).data.tags[tracking.TAG_OWNER] == tracking.this_owner().id
    assert len(tracker.runs_of_key(spec.run_key)) == 1


def test_failed_and_killed_runs_are_claimed_not_duplicated(setup):
    tracker, spec, parent = setup
    run_id = tracker.claim_run(spec, parent).run_id
    for status in (tracking.FAILED, tracking.KILLED):
        tracker.end_run(run_id, status)
        assert tracker.claim_run(spec, parent).run_id == run_id
        assert [r.info.run_id for r in tracker.runs_of_key(spec.run_key)] == [run_id]


def test_a_fresh_claim_of_a_dead_process_on_this_host_is_ignored_and_a_live_one_is_not(setup):
    # kill -9 between writing a claim tag and dropping it leaves a fresh claim behind
    tracker, spec, parent = setup
    run_id = tracker.claim_run(spec, parent).run_id
    tracker.end_run(run_id, tracking.KILLED)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    label = f"{socket.gethostname()}:{int(dead.stdout)}"
    tracker.client.set_tag(run_id, tracking.TAG_CLAIM_PREFIX + "dead-owner", f"{time.time():.3f} {label}")
    assert tracker.claim_run(spec, parent).run_id == run_id
    tracker.end_run(run_id, tracking.KILLED)
    tracker.client.set_tag(run_id, tracking.TAG_CLAIM_PREFIX + "live-owner", f"{time.time():.3f} other-host:4242")
    assert tracker.claim_run(spec, parent).reason == "owned by other-host:4242"


def test_a_finished_run_is_done(setup):
    tracker, spec, parent = setup
    run_id = tracker.claim_run(spec, parent).run_id
    tracker.end_run(run_id, tracking.FINISHED)
    assert tracker.claim_run(spec, parent).reason == "done"


def test_a_bad_lease_duration_is_one_line_bad_input(monkeypatch):
    monkeypatch.setenv(tracking.LEASE_ENV, "soon")
    with pytest.raises(ValueError, match="DISENTBENCH_LEASE_SECONDS"):
        tracking.lease_seconds()
