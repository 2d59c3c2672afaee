"""Study analyses: each recovers a known answer from a synthetic run table; the report and `analyze` end to end."""

from __future__ import annotations

import html
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from disentbench.core.analysis.contract import AnalysisResult, AnalysisSkipped
from disentbench.core.analysis.loading import load_study_table
from disentbench.core.analysis.report import run_analyses, write_report
from disentbench.core.analysis.table import StudyTable
from disentbench.core.cli.main import main
from disentbench.plugins.analyses.downstream import Downstream
from disentbench.plugins.analyses.hyperparameter_transfer import HyperparameterTransfer
from disentbench.plugins.analyses.mean_vs_sampled import MeanVsSampled
from disentbench.plugins.analyses.metric_agreement import MetricAgreement
from disentbench.plugins.analyses.seeds_vs_hyperparameters import (
    SeedsVsHyperparameters,
    variance_shares,
    worse_beats_better,
)
from disentbench.plugins.analyses.unsupervised_selection import UnsupervisedSelection

ANALYSES = [
    "downstream",
    "hyperparameter_transfer",
    "mean_vs_sampled",
    "metric_agreement",
    "seeds_vs_hyperparameters",
    "unsupervised_selection",
]
SEED_OFFSETS = np.array([-3.0, -1.0, 1.0, 3.0])  # sum 0: seeds move no configuration mean
CONFIG_EFFECTS = {("alpha_vae", 1): 0.0, ("alpha_vae", 2): 1.0, ("alpha_vae", 3): 2.0,
                  ("gamma_vae", 10): 0.5, ("gamma_vae", 20): 1.5, ("gamma_vae", 30): 2.5}
PARAM = {"alpha_vae": "model.beta", "gamma_vae": "model.gamma"}


def seed_scale(share: float) -> float:
    """Scale of SEED_OFFSETS that makes the seed explain ``share`` of the variance."""
    effects = np.array(list(CONFIG_EFFECTS.values()))
    between = len(SEED_OFFSETS) * np.sum((effects - effects.mean()) ** 2)
    within_unit = len(effects) * np.sum(SEED_OFFSETS**2)
    return math.sqrt(share / (1 - share) * between / within_unit)


def synthetic_table(datasets=("shapes", "blocks")) -> StudyTable:
    """Two objectives x three values x four seeds, with answers known by construction.

    score: seeds explain exactly 80% of its variance; inverse = -score; monotone = exp(score)
    (perfect and inverse rank correlation). TC of the mean representation rises with the
    hyperparameter, of the sampled one falls. train/reconstruction = -score. Downstream
    accuracy ranks like score, efficiency inversely. ``peaked`` is best at the middle value of
    each objective on every dataset (transfer); ``valley`` is worst there.
    """
    scale = seed_scale(0.8)
    rows = []
    for dataset in datasets:
        for (model, value), effect in CONFIG_EFFECTS.items():
            middle = sorted(v for m, v in CONFIG_EFFECTS if m == model)[1]
            for seed, offset in enumerate(SEED_OFFSETS):
                score = effect + scale * offset
                rows.append({
                    "run_id": f"{dataset}-{model}-{value}-{seed}", "run_key": f"k{len(rows)}",
                    "model": model, "dataset": dataset, "seed": str(seed),
                    PARAM[model]: str(float(value)), "model.num_latent": "10",
                    "eval/mean/score_metric/score": score,
                    "eval/mean/inverse_metric/score": -score,
                    "eval/mean/monotone_metric/score": math.exp(score),
                    "eval/mean/peaked_metric/score": -abs(value - middle) / middle + 0.001 * seed,
                    "eval/mean/valley_metric/score": abs(value - middle) / middle - 0.001 * seed,
                    "eval/mean/unsupervised/gaussian_total_correlation": float(value),
                    "eval/sampled/unsupervised/gaussian_total_correlation": -float(value),
                    "train/reconstruction": -score, "train/kl": float(seed), "train/seconds": 3.0,
                    "downstream/mean/probe/100:mean_test_accuracy": 0.5,
                    "downstream/mean/probe/1000:mean_test_accuracy": 0.6 + 0.01 * score,
                    "downstream/mean/probe/sample_efficiency": 1.0 - 0.01 * score,
                })
    return StudyTable.from_frame(pd.DataFrame(rows), study="synthetic", experiment="synthetic")


@pytest.fixture(scope="module")
def table() -> StudyTable:
    return synthetic_table()


# ---------------------------------------------------------------------------
# the table


def test_table_infers_objectives_and_swept_hyperparameters():
    rows = []
    for variant, factor in (("i", 10), ("ii", 1)):
        for lambda_od in (1, 2, 5):
            rows.append({"model": "dip", "dataset": "d", "seed": "0", "model.variant": variant,
                         "model.lambda_d_factor": str(factor), "model.lambda_od": str(lambda_od),
                         "model.num_latent": "10"})
    table = StudyTable.from_frame(pd.DataFrame(rows))
    assert table.objectives == ["dip (variant=i)", "dip (variant=ii)"]
    assert table.hyperparameters == {"dip (variant=i)": ["model.lambda_od"], "dip (variant=ii)": ["model.lambda_od"]}
    assert list(table.runs["config"])[:2] == ["dip (variant=i) lambda_od=1", "dip (variant=i) lambda_od=2"]
    assert table.runs["hp_value"].tolist() == [1, 2, 5, 1, 2, 5]


def test_table_columns_and_headlines(table):
    assert table.objectives == ["alpha_vae", "gamma_vae"]
    assert table.hyperparameter_name("gamma_vae") == "gamma"
    assert table.train_columns() == ["train/reconstruction", "train/kl"]  # bookkeeping left out
    assert table.label("eval/mean/score_metric/score") == "score_metric"
    limited = StudyTable.from_frame(table.runs[["model", "dataset", "seed", "model.beta"]].assign(
        **{"eval/mean/m/a": 1.0, "eval/mean/m/b": 2.0}), headlines={"m": ("b",)})
    assert limited.score_columns() == ["eval/mean/m/b"]


# ---------------------------------------------------------------------------
# each analysis recovers its constructed answer


def test_metric_agreement_recovers_perfect_and_inverse_rank_correlation(table):
    result = MetricAgreement().run(table)
    matrix = result.tables["Spearman rank correlation between metrics on shapes"]
    assert matrix.loc["score_metric", "monotone_metric"] == pytest.approx(1.0)
    assert matrix.loc["score_metric", "inverse_metric"] == pytest.approx(-1.0)
    assert result.numbers["shapes/min_spearman"] == pytest.approx(-1.0)
    assert "On shapes (24 runs" in result.paragraphs[0]
    assert "metric rank correlation per dataset" in result.figures


def test_seed_share_is_recovered():
    frame = synthetic_table(("shapes",)).runs
    shares = variance_shares(frame, "eval/mean/score_metric/score")
    assert shares["seed"] == pytest.approx(0.8)
    assert shares["objective"] == pytest.approx(1.5 / 87.5)  # objective means 1.0 and 1.5 around 1.25
    assert shares["hyperparameter"] == pytest.approx(16.0 / 87.5)


def test_seeds_vs_hyperparameters_reports_shares_and_probability(table):
    result = SeedsVsHyperparameters().run(table)
    assert result.numbers["shapes/score_metric/share_seed"] == pytest.approx(0.8)
    assert "the random seed explains" in result.paragraphs[0]
    assert set(result.figures) == {"score distributions on shapes", "score distributions on blocks"}

    two = pd.DataFrame({"model": "m", "dataset": "d", "seed": [0, 1, 0, 1], "model.beta": [1, 1, 2, 2],
                        "eval/mean/x/s": [0.0, 4.0, 1.0, 2.0]})
    # better (mean 2) seeds {0, 4} vs worse (mean 1.5) seeds {1, 2}: worse wins 2 of 4 pairings
    assert worse_beats_better(StudyTable.from_frame(two).runs, "eval/mean/x/s") == pytest.approx(0.5)


def test_mean_vs_sampled_recovers_rising_and_falling_total_correlation(table):
    result = MeanVsSampled().run(table)
    assert result.numbers["shapes/alpha_vae/mean/spearman"] == pytest.approx(1.0)
    assert result.numbers["shapes/gamma_vae/sampled/spearman"] == pytest.approx(-1.0)
    assert "rises with the hyperparameter for 2 of 2 objectives" in result.paragraphs[0]


def test_unsupervised_selection_recovers_reconstruction_correlation(table):
    result = UnsupervisedSelection().run(table)
    matrix = result.tables["Spearman rank correlation of unsupervised scores with metrics on shapes"]
    assert matrix.loc["reconstruction", "score_metric"] == pytest.approx(-1.0)
    assert matrix.loc["reconstruction", "inverse_metric"] == pytest.approx(1.0)
    assert "unsupervised" not in matrix.columns  # a label-free score is not a metric here
    assert "gaussian_total_correlation (mean)" in matrix.index
    assert any("train/tc_estimate" in note for note in result.notes)


def test_hyperparameter_transfer_same_best_value_on_both_datasets(table):
    config = HyperparameterTransfer().config.model_copy(update={"metrics": ["peaked_metric"]})
    result = HyperparameterTransfer(config).run(table)
    # the transferred value is the target's best of n = 3: P = 1 - 1/(2n)
    assert result.numbers["across_datasets/p_beats_random"] == pytest.approx(1 - 1 / 6)
    assert result.numbers["across_datasets/is_target_best"] == 1.0
    assert any("across metrics" in note for note in result.notes)

    both = HyperparameterTransfer(config.model_copy(update={"metrics": ["peaked_metric", "valley_metric"]}))
    result = both.run(table)
    matrix = next(frame for caption, frame in result.tables.items() if caption.startswith("P(value chosen by one metric"))
    # the best value by peaked is the worst by valley: P = (0 + 0 + 1/2) / 3
    assert matrix.loc["peaked_metric", "valley_metric"] == pytest.approx(1 / 6)
    assert matrix.loc["peaked_metric", "peaked_metric"] == pytest.approx(1 - 1 / 6)  # in-sample


def test_downstream_recovers_accuracy_and_efficiency_correlation(table):
    result = Downstream().run(table)
    matrix = result.tables["Spearman rank correlation of metrics with downstream scores on blocks"]
    assert matrix.loc["score_metric", "probe accuracy (1000 points)"] == pytest.approx(1.0)
    assert matrix.loc["score_metric", "probe efficiency"] == pytest.approx(-1.0)
    assert matrix.loc["inverse_metric", "probe efficiency"] == pytest.approx(1.0)


def test_analyses_skip_with_a_reason_when_data_is_missing():
    bare = StudyTable.from_frame(pd.DataFrame({"model": ["m"] * 4, "dataset": "d", "seed": [0, 1, 2, 3],
                                               "model.beta": [1, 1, 2, 2], "eval/mean/x/s": [1.0, 2, 3, 4]}))
    for analysis, reason in ((MetricAgreement(), "at least two metrics"), (Downstream(), "downstream task"),
                             (MeanVsSampled(), "gaussian_total_correlation"),
                             (UnsupervisedSelection(), "no unsupervised score")):
        with pytest.raises(AnalysisSkipped, match=reason):
            analysis.run(bare)


# ---------------------------------------------------------------------------
# the report


def test_report_has_every_section_and_figure(tmp_path):
    outcomes = run_analyses(synthetic_table(("shapes",)))
    assert [o.name for o in outcomes] == ANALYSES
    assert all(o.result is not None for o in outcomes), [(o.name, o.skipped, o.error) for o in outcomes]
    figures = sum(len(o.result.figures) for o in outcomes)
    missing_runs = pd.DataFrame([{"model": "alpha_vae", "dataset": "shapes", "seed": 9, "status": "failed", "run_key": "x"}])
    report = write_report(tmp_path / "report", outcomes, title="synthetic study", missing_runs=missing_runs,
                          missing_lines=["eval/mean/other/score: absent in 3 of 48 finished runs"])
    page = report.html_path.read_text()
    for outcome in outcomes:
        assert f'id="{outcome.name}"' in page and outcome.result.title in page
        assert html.escape(outcome.result.paragraphs[0]) in page
    assert page.count("data:image/png;base64,") == figures
    assert len(list((tmp_path / "report" / "figures").glob("*.png"))) == figures
    assert 'id="missing"' in page and "Runs not finished (1: 1 failed)" in page and "absent in 3 of 48" in page
    assert "train/tc_estimate" in page  # a part skipped for lack of data is listed
    assert "<script" not in page and "src=\"http" not in page  # self-contained
    assert report.summary.splitlines()[0] == "synthetic study"
    assert len(report.summary.splitlines()) >= len(ANALYSES) + 1
    assert report.numbers["metric_agreement/shapes/min_spearman"] == pytest.approx(-1.0)
    assert "transfer across datasets needs scores on two or more datasets" in page


def test_a_failing_analysis_is_reported_not_fatal(table, tmp_path):
    from disentbench import hookimpl
    from disentbench.core.contracts import PluginConfig
    from disentbench.core.registry import build_registry

    class Broken:
        def __init__(self, config):
            pass

        def run(self, table):
            raise RuntimeError("boom")

    class Plugin:
        @staticmethod
        @hookimpl
        def register_analyses(register):
            register("broken", config=PluginConfig, factory=Broken, description="always fails")

    registry = build_registry(load_entry_points=False, extra_plugins=[Plugin])
    outcomes = run_analyses(table, registry, only=["broken", "metric_agreement"])
    assert outcomes[0].error == "RuntimeError: boom" and isinstance(outcomes[1].result, AnalysisResult)
    page = write_report(tmp_path, outcomes, title="t").html_path.read_text()
    assert "analysis <code>broken</code> failed: RuntimeError: boom" in page


# ---------------------------------------------------------------------------
# `disentbench analyze` on a tiny MLflow store with fake runs


QUICK_CONFIG = {
    "name": "tiny_partial",
    "datasets": ["dsprites_procedural"],
    "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}}],
    "seeds": 3,
    "training": {"steps": 10},
    "evaluation": {"metrics": ["mig", "factor_vae_score"], "representations": ["mean", "sampled"]},
}


def _log_fake_run(client, experiment_id, parent, *, model, dataset, seed, params, metrics, status, run_key, curve=()):
    from mlflow.entities import Metric, Param

    tags = {"mlflow.parentRunId": parent, "disentbench.kind": "run", "run_key": run_key, "study": "fake",
            "model": model, "dataset": dataset, "seed": str(seed)}
    run = client.create_run(experiment_id, tags=tags)
    all_params = {"model": model, "dataset": dataset, "seed": str(seed), "training.steps": "10", **params}
    entries = [Metric(k, v, 0, 10) for k, v in metrics.items()]
    entries += [Metric("train/reconstruction", value, 0, step) for step, value in curve]
    client.log_batch(run.info.run_id, metrics=entries, params=[Param(k, v) for k, v in all_params.items()])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store holding a fake 2-dataset study (one run failed, one never started)
    and the first half of QUICK_CONFIG's grid."""
    from mlflow.tracking import MlflowClient

    from disentbench.core.config.grid import expand_grid
    from disentbench.core.config.load import load_study_config

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    rng = np.random.default_rng(0)

    experiment = client.create_experiment("fake_study")
    parent = client.create_run(experiment, tags={"disentbench.kind": "study", "study": "fake"}).info.run_id
    client.log_param(parent, "num_runs", 14)
    grid = list(itertools.product(["shapes", "blocks"], [1.0, 4.0, 8.0], [0, 1]))
    for index, (dataset, beta, seed) in enumerate(grid):
        mig = 0.1 * beta + 0.05 * seed + rng.normal(0, 0.01)
        metrics = {"eval/mean/mig/discrete_mig": mig, "eval/mean/factor_vae_score/eval_accuracy": 0.5 + mig,
                   "eval/mean/factor_vae_score/train_accuracy": 0.9,
                   "eval/sampled/mig/discrete_mig": mig / 2, "train/kl": 10 * beta, "train/elbo": -100 - beta}
        if index == 0:
            metrics.pop("eval/sampled/mig/discrete_mig")
        _log_fake_run(client, experiment, parent, model="beta_vae", dataset=dataset, seed=seed,
                      params={"model.beta": str(beta), "model.num_latent": "10"}, metrics=metrics,
                      status="FAILED" if index == 5 else "FINISHED", run_key=f"key{index}",
                      curve=[(5, 200.0), (10, 150.0 - mig)])

    config = load_study_config(QUICK_CONFIG)
    specs = expand_grid(config)
    partial = client.create_experiment(config.experiment_name)
    parent = client.create_run(partial, tags={"disentbench.kind": "study", "study": config.name}).info.run_id
    for spec in specs[:3]:
        _log_fake_run(client, partial, parent, model=spec.model, dataset=spec.dataset, seed=spec.seed,
                      params={f"model.{k}": str(v) for k, v in spec.model_params.items()},
                      metrics={"eval/mean/mig/discrete_mig": 0.1 * spec.seed}, status="FINISHED",
                      run_key=spec.run_key)
    return uri


def test_load_study_table_from_mlflow(store):
    table = load_study_table(store, "fake_study")
    assert len(table.runs) == 11 and table.expected_runs == 14
    assert table.datasets == ["shapes", "blocks"] or table.datasets == ["blocks", "shapes"]
    assert table.hyperparameters == {"beta_vae": ["model.beta"]}
    assert set(table.runs["hp_value"]) == {1.0, 4.0, 8.0}
    assert table.runs["train/reconstruction"].between(149, 150).all()  # the last value of the curve
    assert sorted(table.score_columns()) == ["eval/mean/factor_vae_score/eval_accuracy", "eval/mean/mig/discrete_mig"]
    assert table.incomplete[["status", "run_key"]].values.tolist() == [["failed", "key5"]]
    assert any("planned 14 runs; 12 are recorded" in note for note in table.notes)
    with pytest.raises(LookupError, match="no experiment named 'nope'"):
        load_study_table(store, "nope")


def test_analyze_end_to_end_logs_report_as_artifacts(store, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["analyze", "fake_study", "--tracking-uri", store, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "metric_agreement: On " in result.output and "report: " in result.output
    assert "missing: 1 run(s) not finished (1 failed)" in result.output
    assert "downstream: skipped (no downstream/mean/" in result.output

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("fake_study")
    runs = client.search_runs([experiment.experiment_id], "tags.`disentbench.kind` = 'analysis'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert "mlflow.parentRunId" not in run.data.tags and run.data.tags["study"] == "fake"
    assert run.data.params["finished_runs"] == "11"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.txt", "figures", "tables"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in (out / "figures").glob("*.png")} and len(figures) >= 4
    assert any(k.startswith("metric_agreement/") for k in run.data.metrics)
    page = (out / "report.html").read_text()
    assert "eval/sampled/mig/discrete_mig: absent in 1 of 11 finished runs" in page
    assert "never started" in page

    # the analysis run is not a study run: a second analysis still sees 11 runs
    assert len(load_study_table(store, "fake_study").runs) == 11


def test_analyze_partial_study_from_config_lists_missing_runs(store, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(QUICK_CONFIG))
    out = tmp_path / "partial"
    result = CliRunner().invoke(
        main, ["analyze", str(config), "--tracking-uri", store, "--out", str(out), "--only", "metric_agreement",
               "--only", "seeds_vs_hyperparameters", "--no-log"]
    )
    assert result.exit_code == 0, result.output
    assert "missing: 3 run(s) not finished (3 pending)" in result.output
    assert "metric_agreement: skipped (needs the scores of at least two metrics" in result.output
    page = (out / "report.html").read_text()
    assert "Runs not finished (3: 3 pending)" in page and "beta=4" in page
    assert "factor_vae_score on the mean representation: in the config, but no finished run has recorded it" in page


def test_analyze_bad_input_exits_2(store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["analyze", "no_such_study", "--tracking-uri", store, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no experiment named 'no_such_study'" in result.output
    result = runner.invoke(main, ["analyze", "fake_study", "--tracking-uri", store, "--only", "nope"])
    assert result.exit_code == 2 and "unknown analysis nope" in result.output
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(main, ["analyze", str(missing), "--tracking-uri", store])
    assert result.exit_code == 2 and "no such config file" in result.output
