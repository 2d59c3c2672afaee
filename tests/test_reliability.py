"""Resumable, idempotent studies: kills, races and concurrent writers lose nothing and duplicate nothing."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import registry_with_model

CLI = [sys.executable, "-m", "disentbench.core.cli.main"]


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


# Two targeted kill points (mid-training right after a checkpoint; right after a run finished,
# i.e. while the next one starts) and two seeded random times, which land in whatever phase
# the machine is in then: start-up, training, checkpointing, evaluation or logging.
_RANDOM_DELAYS = [round(random.Random(seed).uniform(1.5, 6.0), 2) for seed in (1, 2)]


@pytest.mark.parametrize("kill_when", ["checkpoint", "first_run_finished", *(f"after:{d}" for d in _RANDOM_DELAYS)])
def test_sigkill_then_rerun_finishes_every_run_exactly_once(tmp_path, kill_when):
    path = _study(tmp_path, "killed", steps=40, seeds=1, checkpoint_every=10)
    proc = subprocess.Popen(CLI + ["run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 600
    checkpoints = tmp_path / "checkpoints"
    started = time.time()
    while time.time() < deadline and proc.poll() is None:
        if kill_when.startswith("after:") and time.time() - started >= float(kill_when.split(":")[1]):
            break
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
    if proc.poll() is not None:
        pytest.skip(f"the study finished before the kill point {kill_when} on this machine")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    rerun = subprocess.run(CLI + ["run", str(path), "-q"], capture_output=True, text=True, env=_env(), timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_each_key_finished_once(tmp_path, "killed", 2)
    status = subprocess.run(CLI + ["status", str(path)], capture_output=True, text=True, env=_env(), timeout=300)
    assert "2 runs: 2 finished" in status.stdout


def test_nan_loss_fails_that_run_with_the_reason_and_the_others_finish(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from pydantic import Field

    from disentbench.core.config.load import load_study_config
    from disentbench.core.study.run import run_study
    from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig

    class ExplodingConfig(BetaVAEConfig):
        explode_at: int = Field(-1, description="Step from which the loss is NaN (-1: never).")

    class Exploding(BetaVAE):
        def loss(self, x, step, generator=None):
            terms = super().loss(x, step, generator)
            if 0 <= self.config.explode_at <= int(step):
                terms["total"] = terms["total"] * float("nan")
            return terms

    monkeypatch.chdir(tmp_path)
    registry = registry_with_model("exploding_vae", ExplodingConfig, Exploding, "test: NaN on demand")
    path = _study(tmp_path, "nan", steps=10, seeds=1)
    raw = yaml.safe_load(path.read_text())
    raw["models"] = [{"name": "exploding_vae", "sweep": {"explode_at": [-1, 3]}, "params": {"num_latent": 4}}]
    result = run_study(load_study_config(raw, registry), registry=registry, progress=False)

    statuses = {o.spec.model_params["explode_at"]: o for o in result.outcomes}
    assert statuses[-1].status == "finished" and "eval/mean/mig/discrete_mig" in statuses[-1].scores
    assert statuses[3].status == "failed" and "non-finite loss at step 5" in statuses[3].error
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    failed = client.get_run(statuses[3].run_id)
    assert failed.info.status == "FAILED" and "non-finite loss" in failed.data.tags["error"]
    assert client.get_run(result.parent_run_id).info.status == "FAILED"
