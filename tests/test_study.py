"""The quickstart study end to end (fewer steps), and what lands in MLflow."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from disentbench.core.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def quick_config(tmp_path, monkeypatch):
    """examples/quickstart.yaml with fewer steps and smaller metrics, run in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    config["training"].update(steps=30, log_every=10, checkpoint_every=20)
    config["evaluation"]["metrics"] = [
        {"name": "mig", "params": {"num_train": 300}},
        {"name": "factor_vae_score", "params": {"num_train": 20, "num_eval": 10, "num_variance_estimate": 200}},
    ]
    config["tracking"] = {"index_tag": "grid_index"}
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_quickstart_end_to_end(quick_config, tmp_path):
    from mlflow.tracking import MlflowClient

    result = CliRunner().invoke(main, ["run", str(quick_config), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "factor_vae_score" in result.output and "disentbench ui" in result.output

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("disentbench.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("disentbench.kind") == "run"]
    assert len(parents) == 1 and len(children) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert len({r.data.tags["run_key"] for r in children}) == 4
    assert sorted(r.data.tags["grid_index"] for r in children) == ["0", "1", "2", "3"]
    assert sorted((r.data.params["model.beta"], r.data.tags["seed"]) for r in children) == [
        ("1.0", "0"), ("1.0", "1"), ("4.0", "0"), ("4.0", "1")
    ]

    run = children[0]
    assert run.data.tags["model"] == "beta_vae" and run.data.tags["dataset"] == "dsprites_procedural"
    assert run.data.params["training.steps"] == "30"
    for key in ("eval/mean/mig/discrete_mig", "eval/mean/factor_vae_score/eval_accuracy", "train/elbo"):
        assert key in run.data.metrics, sorted(run.data.metrics)
    assert 0.0 <= run.data.metrics["eval/mean/factor_vae_score/eval_accuracy"] <= 1.0
    curve = client.get_metric_history(run.info.run_id, "train/reconstruction")
    assert [m.step for m in curve] == [10, 20, 30]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "scores.json", "images", "checkpoints"} <= artifacts
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert images == {
        "images/reconstructions.png", "images/traversals.png", "images/traversals.gif", "images/score_card.png"
    }
    local = Path(client.download_artifacts(run.info.run_id, "scores.json", str(tmp_path)))
    assert json.loads(local.read_text())["eval/mean/mig/discrete_mig"] == pytest.approx(
        run.data.metrics["eval/mean/mig/discrete_mig"]
    )

    # Re-running is idempotent: every run key is finished, nothing is retrained.
    again = CliRunner().invoke(main, ["run", str(quick_config), "--device", "cpu", "--quiet"])
    assert again.exit_code == 0, again.output
    runs_after = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs_after if r.data.tags.get("disentbench.kind") == "run"]) == 4

    status = CliRunner().invoke(main, ["status", str(quick_config)])
    assert status.exit_code == 0, status.output
    assert "4 runs: 4 finished" in status.output


def test_status_before_any_run(quick_config, tmp_path):
    status = CliRunner().invoke(main, ["status", str(quick_config)])
    assert status.exit_code == 0, status.output
    assert "4 runs: 4 pending" in status.output


def test_missing_data_file_is_bad_input_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISENTBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump({"name": "s", "datasets": ["dsprites"], "models": ["beta_vae"], "training": {"steps": 2}})
    )
    result = CliRunner().invoke(main, ["run", "s.yaml", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_a_metric_added_after_runs_finished_scores_them_from_their_checkpoints(tmp_path, monkeypatch):
    """Rerunning with one more metric: finished runs are not retrained, but scored with it, and their new
    score equals the one a study with that metric from the start records."""
    from mlflow.tracking import MlflowClient

    from disentbench.core.config.load import load_study_config
    from disentbench.core.registry import get_plugin_manager
    from disentbench.core.study.run import run_study

    monkeypatch.chdir(tmp_path)
    registry = get_plugin_manager()
    mig = {"name": "mig", "params": {"num_train": 100}}
    sap = {"name": "sap", "params": {"num_train": 100, "num_test": 50}}

    def raw(name, metrics):
        return {
            "name": name, "datasets": ["dsprites_procedural"],
            "models": [{"name": "beta_vae", "sweep": {"beta": [1.0]}, "params": {"num_latent": 4}}],
            "seeds": [0],
            "training": {"steps": 5, "batch_size": 8, "log_every": 5, "device": "cpu",
                         "checkpoint_dir": str(tmp_path / f"ck_{name}")},
            "evaluation": {"metrics": metrics, "representations": ["mean", "sampled"]},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }  # fmt: skip

    first = run_study(load_study_config(raw("grown", [mig]), registry), registry=registry, progress=False)
    run_id = first.outcomes[0].run_id
    again = run_study(load_study_config(raw("grown", [mig, sap]), registry), registry=registry, progress=False)
    fresh = run_study(load_study_config(raw("fresh", [mig, sap]), registry), registry=registry, progress=False)

    outcome = again.outcomes[0]
    assert outcome.status == "skipped" and outcome.run_id == run_id
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics = client.get_run(run_id).data.metrics
    for representation in ("mean", "sampled"):
        key = f"eval/{representation}/sap/SAP_score"
        assert metrics[key] == fresh.outcomes[0].scores[key] == outcome.scores[key]
        mig_key = f"eval/{representation}/mig/discrete_mig"
        assert len(client.get_metric_history(run_id, mig_key)) == 1  # the old metric is not scored again
    assert [m.step for m in client.get_metric_history(run_id, "train/total")] == [5]  # not retrained
    saved = json.loads(Path(client.download_artifacts(run_id, "scores.json", str(tmp_path / "dl"))).read_text())
    assert "eval/mean/sap/SAP_score" in saved and "eval/mean/mig/discrete_mig" in saved
    # A third run with the same metrics scores nothing again.
    run_study(load_study_config(raw("grown", [mig, sap]), registry), registry=registry, progress=False)
    assert len(client.get_metric_history(run_id, "eval/mean/sap/SAP_score")) == 1
