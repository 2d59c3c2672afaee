"""The local executor's evaluation pool: trained runs are evaluated in other processes while the next pack trains.

A tiny study (4 beta-VAE runs in packs of 2, CPU) runs with
``executor: {name: local, params: {evaluation_processes: 1}}``: every run key
ends FINISHED once, evaluated by the pool (its lease handed over, so the
evaluating process is the run's last owner), with the scores the in-process
evaluation gives; a second invocation does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from disentbench.core.config.load import load_study_config
from disentbench.core.study.run import run_study
from disentbench.plugins.executors.local import LocalConfig

SCORE = "eval/mean/mig/discrete_mig"


def _config(tmp_path: Path, name: str, executor: dict) -> dict:
    return {
        "name": name,
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}, "params": {"num_latent": 4}}],
        "seeds": 2,
        "training": {
            "steps": 5,
            "batch_size": 8,
            "log_every": 5,
            "checkpoint_every": 10_000,
            "device": "cpu",
            "pack_size": 2,
            "checkpoint_dir": str(tmp_path / f"checkpoints_{name}"),
        },
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}]},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "executor": executor,
    }


def _runs(tmp_path: Path, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    by_key: dict = {}
    for run in client.search_runs([exp.experiment_id], "tags.`disentbench.kind` = 'run'"):
        by_key.setdefault(run.data.tags["run_key"], []).append(run)
    return by_key


def test_runs_evaluated_in_the_pool_score_as_in_process(tmp_path, registry, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps artifacts in ./mlruns
    local = run_study(load_study_config(_config(tmp_path, "here", {"name": "local"}), registry), progress=False)
    assert [o.status for o in local.outcomes] == ["finished"] * 4

    overlapped = {"name": "local", "params": {"evaluation_processes": 1}}
    study = load_study_config(_config(tmp_path, "pool", overlapped), registry)
    first = run_study(study, registry=registry, progress=False)
    assert [o.status for o in first.outcomes] == ["finished"] * 4, [o.error for o in first.outcomes]
    assert {o.spec.run_key: o.scores for o in first.outcomes} == {o.spec.run_key: o.scores for o in local.outcomes}

    runs = _runs(tmp_path, "pool")
    assert len(runs) == 4
    for key, key_runs in runs.items():
        assert [r.info.status for r in key_runs] == ["FINISHED"], key
        run = key_runs[0]
        assert SCORE in run.data.metrics and run.data.metrics["evaluation/seconds"] > 0
        assert run.data.tags["pack_size"] == "2"
        assert run.data.tags["disentbench.stage"] == "evaluated"
        assert run.data.tags["disentbench.owner_pid"] != str(os.getpid())  # evaluated by a pool process
    second = run_study(study, registry=registry, progress=False)
    assert [o.status for o in second.outcomes] == ["skipped"] * 4


def test_a_trained_run_hands_its_lease_on(tmp_path, registry, monkeypatch):
    """Without the hand-over, another process could claim a trained run only after its lease expired."""
    from disentbench.core.tracking import tracker as tracking

    monkeypatch.chdir(tmp_path)
    study = load_study_config(_config(tmp_path, "handover", {"name": "local"}), registry)
    run_id = run_study(study, registry=registry, progress=False).outcomes[0].run_id
    tracker = tracking.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "handover")
    tracker.client.update_run(run_id, status=tracking.RUNNING)
    tracker.set_tags(run_id, tracking.lease_tags(tracking.this_owner(), 60))
    assert tracking.live_lease(tracker.client.get_run(run_id)) is not None
    assert tracker.release_lease(run_id)
    assert tracking.live_lease(tracker.client.get_run(run_id)) is None
    assert not tracker.release_lease(run_id)  # no longer ours: nothing written


def test_evaluation_processes_and_device_are_validated():
    import torch

    from disentbench.plugins.executors.local import LocalExecutor

    assert LocalConfig().evaluation_processes == 0
    with pytest.raises(ValueError, match="evaluation_processes"):
        LocalConfig(evaluation_processes=-1)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        LocalConfig(evaluation_device="gpu")
    yaml.safe_dump(LocalConfig(evaluation_processes=2).model_dump())  # plain data, as configs are logged
    LocalExecutor(LocalConfig(evaluation_processes=1, evaluation_device="cpu")).check()
    if not torch.cuda.is_available():  # a device this machine lacks: one line naming the field, before any write
        executor = LocalExecutor(LocalConfig(evaluation_processes=1, evaluation_device="cuda"))
        with pytest.raises(ValueError, match=r"^executor.params.evaluation_device: device 'cuda' requested"):
            executor.check()
