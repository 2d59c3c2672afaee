"""Resumable, idempotent studies: kills, races and concurrent writers lose nothing and duplicate nothing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CLI = [sys.executable, "-m", "disentbench.core.cli"]


def _study(tmp_path: Path, name: str, *, steps: int = 10, seeds: int = 2, executor=None, checkpoint_every: int = 1000) -> Path:
    config = {
        "name": name,
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}, "params": {"num_latent": 4}}],
        "seeds": seeds,
        "training": {
            "steps": steps,
            "batch_size": 8,
            "log_every": 5,
            "checkpoint_every": checkpoint_every,
            "device": "cpu",
            "checkpoint_dir": str(tmp_path / "checkpoints"),
        },
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}]},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    if executor:
        config["executor"] = executor
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env():
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _runs_by_key(tmp_path: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`disentbench.kind` = 'run'")
    grouped = {}
    for run in runs:
        grouped.setdefault(run.data.tags["run_key"], []).append(run)
    return grouped


def _assert_each_key_finished_once(tmp_path, experiment, expected):
    grouped = _runs_by_key(tmp_path, experiment)
    assert len(grouped) == expected, {k: [r.info.status for r in v] for k, v in grouped.items()}
    for key, runs in grouped.items():
        assert [r.info.status for r in runs] == ["FINISHED"], (key, [r.info.status for r in runs])
        assert "eval/mean/mig/discrete_mig" in runs[0].data.metrics


def test_multiprocess_executor_four_writers_one_sqlite_store(tmp_path):
    path = _study(tmp_path, "mp", seeds=2, executor={"name": "multiprocess", "params": {"workers": 4}})
    result = subprocess.run(CLI + ["run", str(path), "-q"], capture_output=True, text=True, env=_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_each_key_finished_once(tmp_path, "mp", 4)


def test_two_racing_invocations_never_duplicate_a_run(tmp_path):
    path = _study(tmp_path, "race", seeds=2)
    # create the store first so both processes race on runs, not on schema creation
    subprocess.run(CLI + ["status", str(path)], capture_output=True, env=_env(), check=True, timeout=300)
    procs = [
        subprocess.Popen(CLI + ["run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-3000:]
    _assert_each_key_finished_once(tmp_path, "race", 4)


@pytest.mark.parametrize("kill_when", ["checkpoint", "first_run_finished"])
def test_sigkill_then_rerun_finishes_every_run_exactly_once(tmp_path, kill_when):
    path = _study(tmp_path, "killed", steps=40, seeds=1, checkpoint_every=10)
    proc = subprocess.Popen(CLI + ["run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 600
    checkpoints = tmp_path / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if kill_when == "checkpoint" and list(checkpoints.glob("*/checkpoint.pt")):
            break
        if kill_when == "first_run_finished" and (tmp_path / "mlflow.db").exists():
            try:
                grouped = _runs_by_key(tmp_path, "killed")
            except Exception:
                grouped = {}
            if any(r.info.status == "FINISHED" for runs in grouped.values() for r in runs):
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    rerun = subprocess.run(CLI + ["run", str(path), "-q"], capture_output=True, text=True, env=_env(), timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_each_key_finished_once(tmp_path, "killed", 2)
    status = subprocess.run(CLI + ["status", str(path)], capture_output=True, text=True, env=_env(), timeout=300)
    assert "2 runs: 2 finished" in status.stdout
