"""`disentbench compare`: finished runs side by side with their headline scores, filtered, sorted, as CSV/JSON."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import yaml
from click.testing import CliRunner

from disentbench.core.cli.main import main

MIG = "eval/mean/mig/discrete_mig"
MIG_SAMPLED = "eval/sampled/mig/discrete_mig"
FVAE = "eval/mean/factor_vae_score/eval_accuracy"
DOWN = "downstream/mean/downstream_logistic_regression/100:mean_test_accuracy"



# ---------------------------------------------------------------------------
# compare, on a store of fake runs


def _fake_study(uri: str, name: str = "cmp", runs=None, config: dict | None = None) -> dict[str, str]:
    """An experiment as `disentbench run` leaves it: a study parent run and tagged child runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(name)
    evaluation = {
        "metrics": [{"name": "mig", "params": {}}, {"name": "factor_vae_score", "params": {}}],
        "tasks": [{"name": "downstream_logistic_regression", "params": {"num_train": [10, 100]}}],
        "representations": ["mean", "sampled"],
    }
    parent = client.create_run(experiment_id, tags={"disentbench.kind": "study", "study": name}, run_name=f"{name} now")
    models = [{"name": "beta_vae", "sweep": {"beta": [1, 4, 8]}}, {"name": "factor_vae", "sweep": {"gamma": [10]}}]
    recorded = config or {"name": name, "models": models, "evaluation": evaluation}
    client.log_param(parent.info.run_id, "config", json.dumps(recorded))
    client.set_terminated(parent.info.run_id)
    ids = {}
    for run_name, model, dataset, seed, params, metrics, status in runs:
        tags = {"mlflow.parentRunId": parent.info.run_id, "disentbench.kind": "run", "study": name,
                "model": model, "dataset": dataset, "seed": str(seed), "run_key": params.pop("run_key", run_name)}
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
        for key, value in {"model": model, "dataset": dataset, "seed": seed, **params}.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, status=status)
        ids[run_name] = run.info.run_id
    return ids


def _scores(mig, mig_sampled, fvae, down):
    return {
        MIG: mig, MIG_SAMPLED: mig_sampled, "eval/mean/mig/continuous_mig": 0.5,  # not a headline key
        FVAE: fvae, "eval/mean/factor_vae_score/train_accuracy": 0.99,
        DOWN: down, "downstream/mean/downstream_logistic_regression/10:mean_test_accuracy": 0.2,
        "train/elbo": -100.0,
    }


RUNS = [
    ("beta_vae beta=1 dsprites s=0", "beta_vae", "dsprites", 0, {"model.beta": "1.0", "model.num_latent": "10"},
     _scores(0.10, 0.05, 0.60, 0.70), "FINISHED"),
    ("beta_vae beta=4 dsprites s=0", "beta_vae", "dsprites", 0, {"model.beta": "4.0", "model.num_latent": "10"},
     _scores(0.30, 0.02, 0.80, 0.65), "FINISHED"),
    ("factor_vae gamma=10 dsprites s=1", "factor_vae", "dsprites", 1, {"model.gamma": "10.0"},
     _scores(0.20, 0.25, 0.70, 0.90), "FINISHED"),
    ("beta_vae beta=1 cars3d s=0", "beta_vae", "cars3d", 0, {"model.beta": "1.0", "model.num_latent": "10"},
     _scores(0.05, 0.04, 0.50, 0.40), "FINISHED"),
    ("beta_vae beta=8 dsprites s=0", "beta_vae", "dsprites", 0, {"model.beta": "8.0", "model.num_latent": "10"},
     _scores(0.99, 0.99, 0.99, 0.99), "FAILED"),  # not finished: never shown
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the read-only compare tests (creating a SQLite store takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    ids = _fake_study(uri, runs=[(*r[:4], dict(r[4]), r[5], r[6]) for r in RUNS])
    return uri, ids


def _compare(uri, *args):
    return CliRunner().invoke(main, ["compare", "cmp", "--tracking-uri", uri, *args])


def _json(uri, *args) -> dict:
    result = _compare(uri, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_compare_table_shows_finished_runs_and_headline_scores(store):
    uri, _ = store
    result = _compare(uri)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "cmp: 4 finished run(s)" in out
    assert "beta=8" not in out  # the failed run
    header = " ".join(out.split())  # headers are on several lines: name, key where needed, (representation)
    assert re.search(r"mig factor_vae_score downstream_logistic_regression mig", header), out
    assert re.search(r"\(mean\) \(mean\) \(mean\) \(sampled\)", header), out
    assert "continuous_mig" not in out and "train_accuracy" not in out and "elbo" not in out
    assert "beta=4" in out and "gamma=10" in out  # the varying model params


def test_compare_json_columns_are_the_headline_keys_in_config_order(store):
    uri, ids = store
    data = _json(uri)
    # mean before sampled; metrics in config order, then tasks; the task's headline follows its params (num_train)
    assert data["columns"] == [MIG, FVAE, DOWN, MIG_SAMPLED]
    assert len(data["runs"]) == 4
    run = next(r for r in data["runs"] if r["run_name"] == "beta_vae beta=4 dsprites s=0")
    assert run["run_id"] == ids["beta_vae beta=4 dsprites s=0"]
    assert run["params"] == {"beta": "4"} and run["seed"] == 0 and run["model"] == "beta_vae"
    assert run["scores"][MIG] == pytest.approx(0.30)


def test_compare_sorting(store):
    uri, _ = store
    names = lambda data: [r["run_name"] for r in data["runs"]]  # noqa: E731
    assert names(_json(uri, "--sort", "mig")) == [
        "beta_vae beta=4 dsprites s=0", "factor_vae gamma=10 dsprites s=1",
        "beta_vae beta=1 dsprites s=0", "beta_vae beta=1 cars3d s=0",
    ]  # highest first
    assert names(_json(uri, "--sort", "mig (sampled)"))[0] == "factor_vae gamma=10 dsprites s=1"
    assert names(_json(uri, "--sort", DOWN, "--reverse"))[0] == "beta_vae beta=1 cars3d s=0"
    assert [r["model"] for r in _json(uri, "--sort", "model")["runs"]] == ["beta_vae"] * 3 + ["factor_vae"]
    assert [r["dataset"] for r in _json(uri, "--sort", "dataset")["runs"]][0] == "cars3d"

    bad = _compare(uri, "--sort", "nope")
    assert bad.exit_code == 2
    assert "--sort 'nope' is not a column" in bad.output and "mig (mean)" in bad.output


def test_compare_filters(store):
    uri, _ = store
    data = _json(uri, "--model", "factor_vae")
    assert [r["model"] for r in data["runs"]] == ["factor_vae"]
    data = _json(uri, "--dataset", "cars3d", "--model", "beta_vae")
    assert [r["run_name"] for r in data["runs"]] == ["beta_vae beta=1 cars3d s=0"]
    data = _json(uri, "--representation", "sampled")
    assert data["columns"] == [MIG_SAMPLED]
    empty = _compare(uri, "--model", "dip_vae")
    assert empty.exit_code == 0
    assert "No finished runs" in empty.output and "known: beta_vae, factor_vae" in empty.output
    typo = _compare(uri, "--model", "nosuch")  # neither recorded nor a plugin: bad input naming the known models
    assert typo.exit_code == 2, typo.output
    assert "error: --model nosuch: no such model; known: beta_vae, factor_vae" in typo.output


def test_compare_csv(store):
    uri, ids = store
    result = _compare(uri, "--csv", "--sort", "factor_vae_score")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[:6] == ["run_id", "run_name", "model", "dataset", "seed", "params"]
    assert [float(r[FVAE]) for r in rows] == [0.80, 0.70, 0.60, 0.50]
    assert rows[0]["run_id"] == ids["beta_vae beta=4 dsprites s=0"] and rows[0]["params"] == "beta=4"


def test_compare_bad_input_exits_2(store):
    uri, _ = store
    assert _compare(uri, "--csv", "--json").exit_code == 2
    missing = CliRunner().invoke(main, ["compare", "no_such_study", "--tracking-uri", uri])
    assert missing.exit_code == 2 and "no experiment named 'no_such_study'" in missing.output


def test_compare_from_config_shows_only_its_grid(tmp_path, monkeypatch, registry):
    from disentbench.core.config.grid import expand_grid
    from disentbench.core.config.load import load_study_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config_path = tmp_path / "grid.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "grid", "datasets": ["dsprites_procedural"], "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}}],
        "evaluation": {"metrics": ["mig"]}, "tracking": {"uri": uri},
    }))
    specs = expand_grid(load_study_config(config_path, registry), registry)
    runs = [(s.run_name, s.model, s.dataset, s.seed, {"run_key": s.run_key, "model.beta": str(s.swept["beta"])},
             {MIG: 0.1 * (i + 1)}, "FINISHED") for i, s in enumerate(specs)]
    runs.append(("stray old run", "beta_vae", "dsprites_procedural", 0, {"run_key": "0000"}, {MIG: 0.9}, "FINISHED"))
    _fake_study(uri, "grid", runs)
    result = CliRunner().invoke(main, ["compare", str(config_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert sorted(r["run_name"] for r in data["runs"]) == sorted(s.run_name for s in specs)
    assert {r["run_name"]: r["params"] for r in data["runs"]}[specs[1].run_name] == {"beta": "4"}
    table = CliRunner().invoke(main, ["compare", str(config_path)])
    assert "2 finished run(s) of 2 in the grid" in table.stdout
