"""Evaluation modes and parallelism: exact mode keeps the previous scores, fast mode stays close, threads change nothing.

``tests/pins/exact_scores_4c34d77.json`` holds every score of every metric and
task on the fixed cases below as computed by disentbench at commit 4c34d77,
before the evaluation engine gained threads and fast mode (issue 19): exact mode
must reproduce them to 1e-9. Regenerate them only for a deliberate change of a
metric's numbers, and say so.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from disentbench import Metric, PluginConfig, hookimpl, score_representation
from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.evaluation.evaluate import ScorerError, evaluate
from disentbench.core.registry import get_plugin_manager


class Grid(GroundTruthData):
    name = "grid"
    factor_names = ("a", "b", "c")
    factor_sizes = (4, 5, 3)
    pixel_scale = 1.0

    def __init__(self):
        factors = self.factors_of(np.arange(self.num_observations))
        images = np.zeros((self.num_observations, 1, 2, 2), dtype=np.uint8)
        images.reshape(self.num_observations, 4)[:, :3] = factors
        self._images = images

    @property
    def images(self):
        return self._images

    def to_float(self, images, random_state):
        observations = super().to_float(images, random_state)
        observations[:, 0, 1, 1] = random_state.rand(len(observations))
        return observations


LOADINGS = np.random.RandomState(3).randn(4, 5)


def code(observations):
    x = observations.reshape(len(observations), -1).astype(np.float64)
    projected = x @ LOADINGS
    return np.tanh(projected / 3.0) + 0.1 * np.sin(5.0 * projected[:, ::-1])


CASES = {
    "beta_vae_score": {"num_train": 120, "num_eval": 60, "batch_size": 8},
    "factor_vae_score": {"num_train": 120, "num_eval": 60, "batch_size": 16, "num_variance_estimate": 300},
    "mig": {"num_train": 300},
    "dci": {"num_train": 200, "num_test": 100},
    "sap": {"num_train": 200, "num_test": 100},
    "modularity_explicitness": {"num_train": 200, "num_test": 100},
    "unsupervised": {"num_train": 200},
    "downstream_logistic_regression": {"num_train": [10, 100], "num_test": 100},
    "downstream_gradient_boosting": {"num_train": [10, 100], "num_test": 100},
}


def scores(name, seed=11, **extra):
    return score_representation(name, Grid(), code, seed=seed, **CASES[name], **extra)


PINS = json.loads((Path(__file__).parent / "pins" / "exact_scores_4c34d77.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_mode_equals_the_previous_implementation(name):
    now, before = scores(name), PINS[name]
    assert set(now) == set(before)
    assert max(abs(now[key] - before[key]) for key in before) <= 1e-9


#: the fast variants, with cases large enough that an accuracy is not a handful of points
FAST_CASES = {
    # the fast variant for every size (by default it starts at 5000 points)
    "downstream_logistic_regression": {"num_train": [10, 100, 300], "num_test": 300, "fast_min_train": 0},
    "downstream_gradient_boosting": {"num_train": [10, 100, 300], "num_test": 300, "fast_min_train": 0},
    "dci": {"num_train": 300, "num_test": 150},
}
#: fast variants that may give exact mode's numbers on a case: DCI's differ only at near-ties
SAME_WITHOUT_NEAR_TIES = {"dci"}


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("name", sorted(FAST_CASES))
def test_fast_mode_headline_scores_within_002_of_exact(name, seed):
    registry = get_plugin_manager()
    kind = "task" if name.startswith("downstream") else "metric"
    registration = registry.get(kind, name)
    headline = registration.factory(registration.make_config(FAST_CASES[name])).headline
    exact = score_representation(name, Grid(), code, seed=seed, **FAST_CASES[name])
    fast = score_representation(name, Grid(), code, seed=seed, fast=True, **FAST_CASES[name])
    assert set(fast) == set(exact)
    if name not in SAME_WITHOUT_NEAR_TIES:
        assert exact != fast  # a different estimator: fast mode is not exact mode under another name
    for key in headline:
        assert abs(fast[key] - exact[key]) <= 0.02, (key, fast[key], exact[key])


class Projection(torch.nn.Module):
    """A fixed 'encoder' of Grid's 2x2 observations with a posterior spread, so sampled codes differ."""

    def __init__(self):
        super().__init__()
        self.weight = torch.from_numpy(LOADINGS).float()

    def encode(self, x):
        mean = torch.tanh(x.reshape(len(x), -1) @ self.weight / 3.0)
        return mean, torch.full_like(mean, -4.0)

    def sample_latent(self, mean, logvar, generator):
        return mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)


def _scorers(registry, names):
    out = []
    for name in names:
        kind = "task" if name.startswith("downstream") else "metric"
        registration = registry.get(kind, name)
        out.append((kind, name, registration.factory(registration.make_config(CASES[name]))))
    return out


@pytest.mark.parametrize("convention", ["per_metric", "study"])
def test_parallel_evaluation_equals_sequential(convention):
    registry = get_plugin_manager()
    scorers = _scorers(registry, ["mig", "dci", "sap", "unsupervised", "downstream_logistic_regression"])
    kwargs = dict(device=torch.device("cpu"), evaluation_seed=4, seed_convention=convention)
    sequential = evaluate(Projection(), Grid(), scorers, ["mean", "sampled"], workers=1, **kwargs)
    parallel = evaluate(Projection(), Grid(), scorers, ["mean", "sampled"], workers=4, **kwargs)
    assert parallel == sequential
    assert sequential["eval/mean/mig/discrete_mig"] != sequential["eval/sampled/mig/discrete_mig"]


def test_progress_callback_sees_every_job_in_order_with_its_time():
    registry = get_plugin_manager()
    seen = []
    evaluate(
        Projection(), Grid(), _scorers(registry, ["mig", "unsupervised"]), ["mean", "sampled"],
        device=torch.device("cpu"), evaluation_seed=0, workers=2,
        on_score=lambda rep, kind, name, scores, seconds: seen.append((rep, name, seconds >= 0.0, bool(scores))),
    )  # fmt: skip
    assert seen == [(r, n, True, True) for r in ("mean", "sampled") for n in ("mig", "unsupervised")]


def test_a_failing_scorer_is_named_and_the_others_still_run():
    ran = []
    lock = threading.Lock()

    def broken(data, representation_function, random_state):
        raise ValueError("codes are all NaN")

    def fine(data, representation_function, random_state):
        with lock:
            ran.append(1)
        return {"x": 1.0}

    scorers = [("metric", "fine_a", fine), ("metric", "broken", broken), ("metric", "fine_b", fine)]
    with pytest.raises(ScorerError, match=r"metric 'broken' on the mean representation failed: ValueError: codes are all NaN"):
        evaluate(Projection(), Grid(), scorers, ["mean"], device=torch.device("cpu"), evaluation_seed=0, workers=3)
    assert len(ran) == 2  # the other jobs ran to the end


# -- in a study: one run's failing metric fails that run alone; the mode is recorded and never mixed ------------


class FailOnSecondConfig(PluginConfig):
    pass


class FailOnSecond(Metric):
    """Scores 1.0, except on its second call in this process (the second run of a sequential study)."""

    name = "fail_on_second"
    description = "test metric"
    config_class = FailOnSecondConfig
    calls = 0

    def __call__(self, data, representation_function, random_state):
        type(self).calls += 1
        if type(self).calls == 2:
            raise ValueError("synthetic failure")
        return {"one": 1.0}


class FailingMetricPlugin:
    __name__ = "fail-on-second-test-plugin"

    @staticmethod
    @hookimpl
    def register_metrics(register):
        register(FailOnSecond)


def _study(tmp_path, name, **evaluation):
    return {
        "name": name, "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "params": {"num_latent": 3}}],
        "seeds": 3,
        "training": {"steps": 2, "batch_size": 8, "log_every": 2, "device": "cpu", "checkpoint_dir": str(tmp_path / "ck")},
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}], **evaluation},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "shared"},
    }  # fmt: skip


def test_a_metric_failing_on_one_run_fails_that_run_alone(tmp_path, monkeypatch):
    from disentbench.core.config.load import load_study_config
    from disentbench.core.registry import build_registry
    from disentbench.core.study.run import run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FailOnSecond, "calls", 0)
    registry = build_registry(load_entry_points=False, extra_plugins=[FailingMetricPlugin])
    raw = _study(tmp_path, "failing", metrics=["fail_on_second"], representations=["mean"])
    result = run_study(load_study_config(raw, registry), registry=registry, progress=False)
    assert [o.status for o in result.outcomes] == ["finished", "failed", "finished"]
    assert "metric 'fail_on_second' on the mean representation failed: ValueError: synthetic failure" in result.outcomes[1].error
    assert all(o.scores["eval/mean/fail_on_second/one"] == 1.0 for o in (result.outcomes[0], result.outcomes[2]))


def test_mode_is_recorded_and_mixed_modes_are_refused(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from disentbench.core.cli.main import main
    from disentbench.core.config.load import load_study_config
    from disentbench.core.study.run import run_study

    monkeypatch.chdir(tmp_path)
    registry = get_plugin_manager()
    exact = run_study(load_study_config(_study(tmp_path, "exact"), registry), registry=registry, progress=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = client.get_run(exact.outcomes[0].run_id).data.tags
    assert (tags["evaluation.mode"], tags["evaluation.seed_convention"]) == ("exact", "per_metric")
    for command in (["compare", "shared"], ["analyze", "shared", "--no-log", "--out", str(tmp_path / "a")]):
        first = CliRunner().invoke(main, [*command, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
        assert first.exit_code == 0, first.output

    # the same experiment, other runs (seed 5), scored in fast mode
    raw = _study(tmp_path, "fast", fast=True)
    raw["seeds"] = [5]
    fast = run_study(load_study_config(raw, registry), registry=registry, progress=False)
    assert client.get_run(fast.outcomes[0].run_id).data.tags["evaluation.mode"] == "fast"
    for command in (["compare", "shared"], ["analyze", "shared", "--no-log", "--out", str(tmp_path / "b")]):
        mixed = CliRunner().invoke(main, [*command, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
        assert mixed.exit_code == 2, mixed.output
        errors = [line for line in mixed.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "exact, per_metric seeds: 3 runs; fast, per_metric seeds: 1 runs" in errors[0]
    assert not (tmp_path / "b").exists()


def test_fast_mode_reaches_every_scorer_with_a_fast_variant():
    from disentbench.core.config.load import load_study_config
    from disentbench.core.study.context import build_scorers

    registry = get_plugin_manager()
    raw = {
        "name": "f", "datasets": ["dsprites_procedural"], "models": ["beta_vae"],
        "evaluation": {"fast": True, "metrics": ["dci", "mig"], "tasks": ["downstream_gradient_boosting", "downstream_logistic_regression"]},
    }  # fmt: skip
    configs = {name: scorer.config for _, name, scorer in build_scorers(load_study_config(raw, registry), registry)}
    for name in ("downstream_logistic_regression", "downstream_gradient_boosting", "dci"):
        assert configs[name].fast, name
    assert not hasattr(configs["mig"], "fast")  # no fast variant: nothing to switch


def test_fast_mode_within_002_on_a_trained_model():
    """The fast variants against exact mode on the codes of a (briefly) trained beta-VAE, not a synthetic map."""
    from helpers import Squares, _trainer

    trainer = _trainer(steps=6, seed=5)
    trainer.train()
    model = trainer.model.eval()

    def encode(batch):
        with torch.no_grad():
            mean, _ = model.encode(torch.as_tensor(batch, dtype=torch.float32))
        return mean.numpy()

    registry = get_plugin_manager()
    for name in FAST_CASES:
        case = {**FAST_CASES[name], "num_train": 400 if name == "dci" else [400], "num_test": 200}
        kind = "task" if name.startswith("downstream") else "metric"
        registration = registry.get(kind, name)
        headline = registration.factory(registration.make_config(case)).headline
        exact = score_representation(name, Squares(), encode, seed=3, **case)
        fast = score_representation(name, Squares(), encode, seed=3, fast=True, **case)
        for key in headline:
            assert abs(fast[key] - exact[key]) <= 0.02, (name, key, fast[key], exact[key])


@pytest.mark.parametrize("name", ["downstream_logistic_regression", "downstream_gradient_boosting"])
def test_fast_downstream_tasks_keep_the_study_estimator_below_their_threshold(name):
    case = {"num_train": [10, 100, 300], "num_test": 300}
    exact = score_representation(name, Grid(), code, seed=11, **case)
    fast = score_representation(name, Grid(), code, seed=11, fast=True, fast_min_train=200, **case)
    small = [key for key in exact if key.startswith(("10:", "100:"))]
    assert small and all(fast[key] == exact[key] for key in small)
    assert any(fast[key] != exact[key] for key in exact if key.startswith("300:"))


@pytest.mark.parametrize("name", ["downstream_logistic_regression", "downstream_gradient_boosting"])
def test_downstream_fits_in_worker_processes_equal_fits_in_sequence(name):
    """n_jobs > 1 fits in processes, which consume copies of the random streams: the scores must not move."""
    case = {"num_train": [10, 100, 300], "num_test": 300}
    for convention in (False, True):  # the study convention checks the streams the processes send back
        one = score_representation(name, Grid(), code, seed=11, study_convention=convention, n_jobs=1, **case)
        two = score_representation(name, Grid(), code, seed=11, study_convention=convention, n_jobs=2, **case)
        assert one == two
