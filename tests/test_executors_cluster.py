"""The cluster executors: ``slurm`` through submitit's local backend, ``ray`` on a local Ray cluster.

Each runs the same tiny study (2 runs, 5 steps) into a temporary SQLite store;
every run key must be finished exactly once with its scores, and a second
invocation must skip both without submitting anything. The ``ray`` test is
skipped when the ``disentbench[ray]`` extra is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from disentbench.core.cli.main import main
from disentbench.core.config.load import load_study_config
from disentbench.core.study.run import run_study
from disentbench.plugins.executors.cluster import MissingExtra, RayConfig, SlurmConfig, SlurmExecutor


def _config(tmp_path: Path, name: str, executor: dict) -> dict:
    return {
        "name": name,
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}, "params": {"num_latent": 4}}],
        "seeds": 1,
        "training": {
            "steps": 5,
            "batch_size": 8,
            "log_every": 5,
            "device": "cpu",
            "checkpoint_dir": str(tmp_path / "checkpoints"),
        },
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}]},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "executor": executor,
    }


def _assert_each_run_finished_once(tmp_path: Path, experiment: str, expected: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`disentbench.kind` = 'run'")
    by_key: dict[str, list] = {}
    for run in runs:
        by_key.setdefault(run.data.tags["run_key"], []).append(run)
    assert len(by_key) == expected, {k: [r.info.status for r in v] for k, v in by_key.items()}
    for key, key_runs in by_key.items():
        assert [r.info.status for r in key_runs] == ["FINISHED"], key
        assert "eval/mean/mig/discrete_mig" in key_runs[0].data.metrics
        names = {a.path for a in client.list_artifacts(key_runs[0].info.run_id)}
        assert {"config.yaml", "scores.json"} <= names, names


def _run_twice(tmp_path: Path, registry, config: dict) -> list:
    assert Path.cwd() == tmp_path  # a SQLite store keeps artifacts in ./mlruns of the process creating the experiment
    study = load_study_config(config, registry)
    first = run_study(study, registry=registry, progress=False)
    assert [o.status for o in first.outcomes] == ["finished", "finished"], [o.error for o in first.outcomes]
    assert all("eval/mean/mig/discrete_mig" in o.scores for o in first.outcomes)
    second = run_study(study, registry=registry, progress=False)  # idempotent: nothing left to do
    assert [o.status for o in second.outcomes] == ["skipped", "skipped"]
    _assert_each_run_finished_once(tmp_path, config["name"], 2)
    return first.outcomes


# -- slurm (submitit) ------------------------------------------------------------------


def test_slurm_executor_through_submitit_local_backend(tmp_path, registry, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("submitit", reason="the slurm executor needs the extra: pip install 'disentbench[slurm]'")
    folder = tmp_path / "submitit"
    executor = {
        "name": "slurm",
        "params": {"cluster": "local", "folder": str(folder), "cpus_per_task": 1, "timeout_min": 10, "poll_seconds": 1},
    }
    outcomes = _run_twice(tmp_path, registry, _config(tmp_path, "slurm_local", executor))
    assert len({o.run_id for o in outcomes}) == 2
    submitted = list(folder.glob("*_submitted.pkl")) + list(folder.glob("*/*.pkl"))
    assert submitted, "submitit wrote no job pickles: the runs did not go through it"
    assert list(folder.glob("*_0_result.pkl")), "no task results: the tasks did not run in submitit processes"
    # the rerun submitted nothing: one job per run, from the first invocation only
    assert len(list(folder.glob("*_0_log.out"))) == 2


class _FakeWorker:
    """Enough of core.study.Worker for the executor loop; returns plain tuples (no torch in the task)."""

    device = "cpu"

    def __init__(self):
        self.config_data = {"training": {"checkpoint_dir": "relative/checkpoints"}}
        self.progress = True

    def with_device(self, device):
        clone = _FakeWorker()
        clone.device = device
        return clone

    def __call__(self, job):
        if job.spec == "boom":
            raise RuntimeError("node lost\nsecond line of a long traceback")
        return (job.spec, self.device, Path(self.config_data["training"]["checkpoint_dir"]).is_absolute())


class _Job:  # the executor reads only .spec (for a failed outcome)
    def __init__(self, spec):
        self.spec = spec


def test_slurm_executor_reports_a_failed_task_and_continues(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="the slurm executor needs the extra: pip install 'disentbench[slurm]'")
    import pdb

    import torch

    # submitit's debug backend runs tasks in this process and opens pdb on a failure: not here
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: None)
    threads = torch.get_num_threads()
    executor = SlurmExecutor(SlurmConfig(cluster="debug", folder=tmp_path / "sub", cpus_per_task=1, poll_seconds=0.1))
    try:
        outcomes = list(executor.run([_Job("a"), _Job("boom"), _Job("c")], _FakeWorker()))
    finally:
        torch.set_num_threads(threads)
    assert ("a", "cpu", True) in outcomes and ("c", "cpu", True) in outcomes, outcomes  # cpu; checkpoint_dir absolute
    (failed,) = [o for o in outcomes if not isinstance(o, tuple)]
    assert failed.spec == "boom" and failed.status == "failed"
    assert "\n" not in failed.error and "node lost" in failed.error and "re-run the study" in failed.error, failed.error


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="the slurm executor needs the extra: pip install 'disentbench[slurm]'")
    import shutil

    import submitit.slurm.slurm as submitit_slurm

    which = shutil.which
    monkeypatch.setattr(submitit_slurm.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}" if name == "srun" else which(name, *a, **k))
    config = SlurmConfig(
        cluster="slurm", partition="gpu", gpus_per_task=1, cpus_per_task=8, mem_gb=32, timeout_min=720,
        array_parallelism=64, folder=tmp_path / "sub" / "%j", setup=["source /shared/venv/bin/activate"],
        slurm_additional_parameters={"account": "proj", "qos": "normal"},
    )  # fmt: skip
    executor = SlurmExecutor(config)
    executor.check()  # builds the submitit executor: options are validated before the study writes anything
    script = executor._submitit._executor._make_submission_file_text("python -m task", "uid")
    for line in ["--partition=gpu", "--gpus-per-task=1", "--cpus-per-task=8", "--mem=32GB", "--time=720",
                 "--account=proj", "--qos=normal", "--job-name=disentbench", f"--output={tmp_path}/sub/%j/"]:  # fmt: skip
        assert f"#SBATCH {line}" in script, (line, script)
    assert "source /shared/venv/bin/activate" in script
    assert executor._submitit._executor.parameters["array_parallelism"] == 64


def test_missing_extra_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch, registry):
    import yaml

    monkeypatch.chdir(tmp_path)
    for module in ("ray", "submitit"):
        monkeypatch.setitem(sys.modules, module, None)  # `import ray` raises ImportError
    for name, extra in (("ray", "ray"), ("slurm", "slurm")):
        config = _config(tmp_path, f"missing_{name}", {"name": name})
        load_study_config(config, registry)  # validating the config needs no extra
        with pytest.raises(MissingExtra, match=rf"pip install 'disentbench\[{extra}\]'"):
            run_study(load_study_config(config, registry), registry=registry, progress=False)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = CliRunner().invoke(main, ["run", str(path), "-q"])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: the {name!r} executor needs"), lines
        assert lines[0].endswith(f"pip install 'disentbench[{extra}]'"), lines
    assert not (tmp_path / "mlflow.db").exists()


def test_cluster_configs_validate_without_the_extras():
    assert SlurmConfig().cluster is None and SlurmConfig().gpus_per_task == 0
    assert RayConfig(num_gpus_per_run=0.25).num_gpus_per_run == 0.25
    with pytest.raises(ValueError, match="whole number"):
        RayConfig(num_gpus_per_run=1.5)
    with pytest.raises(ValueError):
        SlurmConfig(cluster="pbs")


# -- ray ----------------------------------------------------------------------------------


@pytest.fixture
def local_ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'disentbench[ray]')")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow  # ~70 s (a local Ray cluster starts two torch workers): keeps the default suite under 15 min
def test_ray_executor_on_a_local_ray_cluster(tmp_path, registry, local_ray_cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)
    executor = {"name": "ray", "params": {"num_cpus_per_run": 1}}
    outcomes = _run_twice(tmp_path, registry, _config(tmp_path, "ray_local", executor))
    assert len({o.run_id for o in outcomes}) == 2
    assert local_ray_cluster.is_initialized(), "the executor must not shut down a cluster it did not start"
