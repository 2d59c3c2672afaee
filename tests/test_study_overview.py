"""The study at a glance: the parent run's scores table and plot, their throttle, and the MLflow UI's shared view."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from click.testing import CliRunner

from disentbench.core.config.grid import RunSpec
from disentbench.core.config.schema import StudyConfig
from disentbench.core.study import overview
from disentbench.core.study.jobs import RunOutcome
from disentbench.core.tracking import view

MIG = "eval/mean/mig/discrete_mig"


def _spec(index: int, beta: float, seed: int = 0) -> RunSpec:
    return RunSpec("s", index, "dsprites_procedural", {}, "beta_vae", {"beta": beta}, {"beta": beta}, seed, 10, 8,
                   run_key=f"k{index}")


class _Mig:
    headline = ("discrete_mig",)


class _NoHeadline:
    headline = None


class _FakeTracker:
    """Records log_artifact calls; ``client`` answers the experiment calls of view.write_view."""

    experiment_id = "1"

    def __init__(self):
        self.logged: list[tuple[str, str]] = []
        self.tags: dict[str, str] = {}
        self.client = self

    def log_artifact(self, run_id, path, artifact_path=None):
        self.logged.append((run_id, f"{artifact_path}/{path.name}"))
        if path.name == "scores.csv":
            self.csv = path.read_text()

    def get_experiment(self, experiment_id):
        return type("Experiment", (), {"tags": dict(self.tags)})()

    def set_experiment_tag(self, experiment_id, key, value):
        self.tags[key] = value


def _config(**evaluation) -> StudyConfig:
    return StudyConfig.model_validate({
        "name": "s", "datasets": ["dsprites_procedural"], "models": [{"name": "beta_vae"}],
        "evaluation": {"representations": ["mean"], **evaluation},
    })


def test_table_rows_status_and_headline_keys():
    specs = [_spec(0, 1.0), _spec(1, 4.0), _spec(2, 4.0, seed=1), _spec(3, 8.0)]
    outcomes = {
        "k0": RunOutcome(specs[0], "finished", "r0", {MIG: 0.25, "eval/mean/mig/continuous_mig": 0.1}),
        "k1": RunOutcome(specs[1], "skipped", "r1", {MIG: 0.5}, error="done"),
        "k2": RunOutcome(specs[2], "failed", "r2", error="ValueError: nan"),
    }
    header, rows = overview.table_rows(specs, outcomes, [MIG])
    assert header == ["run", "model", "beta", "dataset", "seed", "status", MIG, "run_id"]
    assert [row[5] for row in rows] == ["finished", "finished", "failed", "pending"]
    assert [row[6] for row in rows] == [0.25, 0.5, None, None]
    assert rows[0][0] == "beta_vae beta=1 dsprites_procedural s=0" and rows[3][-1] == ""
    assert overview.status_label(RunOutcome(specs[0], "skipped", error="owned by h:1")) == "elsewhere (owned by h:1)"
    assert overview.status_label(RunOutcome(specs[0], "trained")) == "trained, evaluating"

    config = _config()
    scorers = [("metric", "mig", _Mig()), ("metric", "sap", _NoHeadline())]
    recorded = {MIG, "eval/mean/sap/SAP_score", "eval/mean/sap/other"}
    assert overview.study_headline_keys(config, scorers, recorded) == [
        MIG, "eval/mean/sap/SAP_score", "eval/mean/sap/other"
    ]
    assert overview.study_headline_keys(config, scorers, set()) == [MIG]  # before any run: the declared ones


def test_publication_is_throttled_and_linear(tmp_path):
    """Many outcomes in quick succession: one publication per interval, plus the forced one at the end."""
    specs = [_spec(i, float(i % 3)) for i in range(200)]
    outcomes: dict[str, RunOutcome] = {}
    tracker = _FakeTracker()
    now = [0.0]
    glance = overview.StudyOverview(tracker, "parent", _config(), [("metric", "mig", _Mig())], specs, outcomes,
                                    every=30.0, clock=lambda: now[0])
    glance.publish()
    assert glance.publications == 1
    published = 0
    for i, spec in enumerate(specs):  # one run finishes per second for 200 s
        now[0] += 1.0
        outcomes[spec.run_key] = RunOutcome(spec, "finished", f"r{i}", {MIG: i / 200})
        published += glance.changed()
    assert published == 200 // 30  # at 30, 60, ... 180 s
    glance.publish(force=True)
    assert glance.publications == 1 + published + 1
    assert {path for _, path in tracker.logged} == {f"study/{name}" for name in overview.FILES}
    rows = list(csv.DictReader(tracker.csv.splitlines()))
    assert len(rows) == 200 and float(rows[-1][MIG]) == pytest.approx(199 / 200)
    assert {row["status"] for row in rows} == {"finished"}

    slow = overview.StudyOverview(tracker, "parent", _config(), [], specs, outcomes, every=1.0, clock=lambda: now[0])
    slow.last, slow.cost = now[0], 5.0  # a publication that took 5 s: the next waits 20x that
    now[0] += 99.0
    assert not slow.changed()
    now[0] += 1.0
    assert slow.changed()


def test_a_failing_store_is_a_warning_not_a_failure(capsys):
    class Broken(_FakeTracker):
        def log_artifact(self, run_id, path, artifact_path=None):
            raise OSError("disk full")

    specs = [_spec(0, 1.0)]
    glance = overview.StudyOverview(Broken(), "p", _config(), [], specs, {}, every=0.0)
    glance.publish()
    glance.publish(force=True)
    err = capsys.readouterr().err
    assert err.count("cannot update the study overview") == 1 and "disk full" in err


def test_shared_view_state():
    state = view.view_state([MIG, "eval/mean/sap/SAP_score"], ["model.beta"])
    assert state["orderByKey"] == f"metrics.`{MIG}`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == ["params.`model.beta`", f"metrics.`{MIG}`", "metrics.`eval/mean/sap/SAP_score`"]
    assert view.view_state([])["orderByKey"] == view.RUN_NAME_SORT  # never creation time: that nests the runs
    assert view.decode(view.encode(state)) == state
    assert json.loads(view.encode(state)) == state  # short: plain JSON, which the UI reads as is

    big = view.view_state([f"eval/mean/m{i}/{'k' * 40}" for i in range(600)])
    value = view.encode(big)
    assert value.startswith("deflate;") and view.decode(value) == big  # MLflow's own compressed form
    assert view.decode("not json") is None

    other = view.view_state(["eval/mean/dci/disentanglement"])
    merged = view.merged(other, state)
    assert merged["orderByKey"] == state["orderByKey"]
    assert merged["selectedColumns"][0] == "metrics.`eval/mean/dci/disentanglement`"  # the other config's kept
    assert view.merged({"selectedColumns": ["x"]}, state) == state  # a view someone else wrote: replaced

    tracker = _FakeTracker()
    assert view.write_view(tracker, "1", [MIG], ["model.beta"])
    assert not view.write_view(tracker, "1", [MIG], ["model.beta"])  # unchanged: not written again
    assert view.decode(tracker.tags[view.VIEW_TAG])["selectedColumns"][-1] == f"metrics.`{MIG}`"


def test_scores_figure_with_missing_scores():
    from disentbench.core.display.study_plot import scores_figure

    figure = scores_figure(["a x=1", "a x=1", "a x=2"], ["d1", "d2", "d1"],
                           {MIG: [0.1, math.nan, 0.3], "empty": [math.nan] * 3}, title="t")
    assert len(figure.axes) == 1  # a score no run has recorded gets no panel
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["a x=1", "a x=2"]
    nothing = scores_figure(["a"], ["d"], {MIG: [math.nan]})
    assert "no scores recorded yet" in [t.get_text() for t in nothing.axes[0].texts]


def test_a_study_leaves_its_overview_on_the_parent_run_and_its_view_on_the_experiment(tmp_path, monkeypatch):
    """A two-run study: study/scores.{csv,html,png} on the parent run, matching the runs; the shared view; and
    ``ui``'s view of a store recorded before views existed."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from disentbench.core.cli import ui
    from disentbench.core.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({
        "name": "two", "datasets": ["dsprites_procedural"], "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}}],
        "training": {"steps": 2, "batch_size": 8, "device": "cpu", "log_every": 1},
        "evaluation": {"representations": ["mean"], "metrics": [{"name": "mig", "params": {"num_train": 50}}]},
    }))
    result = CliRunner().invoke(main, ["-q", "run", "two.yaml"])
    assert result.exit_code == 0, result.output

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("two")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("disentbench.kind") == "study")
    children = {r.info.run_id: r for r in runs if r.data.tags.get("disentbench.kind") == "run"}
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert listed == {"study/scores.csv", "study/scores.html", "study/scores.png"}
    table = client.download_artifacts(parent.info.run_id, "study/scores.csv", str(tmp_path))
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == 2 and {row["status"] for row in rows} == {"finished"}
    assert {row["beta"] for row in rows} == {"1.0", "4.0"}
    for row in rows:
        assert float(row[MIG]) == children[row["run_id"]].data.metrics[MIG]
    page = open(client.download_artifacts(parent.info.run_id, "study/scores.html", str(tmp_path))).read()
    assert "2 of 2 runs finished" in page and rows[0]["run"] in page
    plot = client.download_artifacts(parent.info.run_id, "study/scores.png", str(tmp_path))
    assert Image.open(plot).format == "PNG"

    state = view.decode(experiment.tags[view.VIEW_TAG])
    assert state["selectedColumns"] == ["params.`model.beta`", f"metrics.`{MIG}`"]
    assert state["orderByKey"] == f"metrics.`{MIG}`"

    # a store from before the view: ui writes it from the recorded runs (and finds the parent run)
    client.delete_experiment_tag(experiment.experiment_id, view.VIEW_TAG)
    assert ui._only_experiment(uri) == "two"
    assert ui._first_view(uri, "two") == (True, parent.info.run_id)
    assert view.decode(client.get_experiment(experiment.experiment_id).tags[view.VIEW_TAG]) == state
    assert ui._experiment_fragment(experiment.experiment_id, True).endswith("&viewStateShareKey=disentbench-study")
