"""Study fidelity without the reference installed: per-model training steps and the evaluation seed conventions.

What the reference itself says is checked in tests/test_parity_dlib.py; here,
the pieces disentbench adds: a model entry's ``training`` override (validated,
part of the run key, shown by a dry run, never packed with other step counts)
and how each seed convention hands random states to the metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import config_with

from disentbench import expand_grid, load_study_config, score_representation
from disentbench.core.cli.main import main
from disentbench.core.evaluation import evaluate as evaluation
from disentbench.core.evaluation.sampling import StudyRandomState, global_stream
from disentbench.core.study.jobs import pack_key

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

BASE = {
    "name": "fidelity",
    "datasets": ["dsprites_procedural"],
    "models": [
        {"name": "beta_vae", "sweep": {"beta": [1, 4]}},
        {"name": "factor_vae", "sweep": {"gamma": [10]}, "training": {"steps": 5}},
    ],
    "training": {"steps": 10, "batch_size": 8, "device": "cpu"},
}


def test_study_v1_dry_run_shows_factor_vae_at_the_studys_updates():
    result = CliRunner().invoke(main, ["run", str(EXAMPLES / "study_v1.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "factor_vae: 2100 runs x 150,000 steps at batch 64" in lines
    assert "beta_vae: 2100 runs x 300,000 steps at batch 64" in lines
    assert lines[-1] == "12600 runs"


def test_model_training_override_sets_steps_and_batch_of_that_entry_only(registry):
    config = load_study_config(config_with(BASE, models__1__training={"steps": 5, "batch_size": 4}), registry)
    specs = expand_grid(config, registry)
    assert [(s.model, s.steps, s.batch_size) for s in specs] == [
        ("beta_vae", 10, 8), ("beta_vae", 10, 8), ("factor_vae", 5, 4)
    ]  # fmt: skip
    assert specs[2].identity()["training"] == {"steps": 5, "batch_size": 4}


def test_override_is_part_of_the_run_key_and_the_pack_key(registry):
    with_override = expand_grid(load_study_config(BASE, registry), registry)
    without = expand_grid(load_study_config(config_with(BASE, models__1__training={}), registry), registry)
    assert [s.run_key for s in with_override[:2]] == [s.run_key for s in without[:2]]  # beta_vae untouched
    assert with_override[2].run_key != without[2].run_key
    assert pack_key(with_override[2]) != pack_key(without[2])


def test_same_model_with_other_steps_is_not_a_duplicate(registry):
    models = [{"name": "beta_vae"}, {"name": "beta_vae", "training": {"steps": 20}}]
    specs = expand_grid(load_study_config(config_with(BASE, models=models), registry), registry)
    assert [s.steps for s in specs] == [10, 20]
    same = [{"name": "beta_vae"}, {"name": "beta_vae", "training": {"steps": 10}}]
    with pytest.raises(Exception, match="twice|same run"):
        load_study_config(config_with(BASE, models=same), registry)


# -- seed conventions -------------------------------------------------------------------------------------------


def test_study_seeds_are_the_pipelines_draws_by_hand():
    master = np.random.RandomState(0)
    draws = [int(master.randint(2**32)) for _ in range(20)]  # 2 postprocess configs, then 2 x 9 metric configs
    seeds = evaluation.study_seeds(0)
    assert seeds["mean", "beta_vae_score"] == draws[2]
    assert seeds["mean", "unsupervised"] == draws[10]
    assert seeds["sampled", "beta_vae_score"] == draws[11]
    assert seeds["sampled", "downstream_gradient_boosting"] == draws[13]  # downstream_task_boosted_trees sorts before ..._logistic_regression
    assert len(set(seeds.values())) == 18


def _first_draws(random_state, n=5):
    return random_state.randint(1000, size=n).tolist()


def test_conventions_hand_out_the_documented_random_states():
    per_metric = evaluation.metric_random_state("per_metric", 3, "mean", "mig")
    assert type(per_metric) is np.random.RandomState and global_stream(per_metric) is None
    assert _first_draws(per_metric) == _first_draws(np.random.RandomState(evaluation.metric_seed(3, "mig")))
    study = evaluation.metric_random_state("study", 3, "sampled", "mig")
    seed = evaluation.study_seeds(3)["sampled", "mig"]
    assert isinstance(study, StudyRandomState)
    assert _first_draws(study) == _first_draws(np.random.RandomState(seed))
    assert _first_draws(global_stream(study)) == _first_draws(np.random.RandomState(seed))  # its own stream
    fixed = evaluation.metric_random_state("fixed", 3, "mean", "dci")
    assert _first_draws(fixed) == _first_draws(np.random.RandomState(3))
    # a scorer the study did not have keeps its per-metric seed
    other = evaluation.metric_random_state("study", 3, "mean", "code_std")
    assert _first_draws(other) == _first_draws(np.random.RandomState(evaluation.metric_seed(3, "code_std")))
    with pytest.raises(ValueError, match="unknown seed convention"):
        evaluation.metric_random_state("dlib", 3, "mean", "mig")


class Linear(torch.nn.Module):
    """A fixed 'encoder' of procedural dSprites: a seeded random projection of the pixels."""

    def __init__(self):
        super().__init__()
        self.weight = torch.randn(64 * 64, 3, generator=torch.Generator().manual_seed(0)) / 64

    def encode(self, x):
        mean = x.reshape(len(x), -1) @ self.weight
        return mean, torch.zeros_like(mean)

    def sample_latent(self, mean, logvar, generator):
        return mean + torch.randn(mean.shape, generator=generator)


@pytest.mark.parametrize("convention", ["study", "fixed", "per_metric"])
def test_evaluate_scores_each_metric_on_its_conventions_seed(registry, convention):
    """evaluate() under a convention equals score_representation with that convention's seed, metric by metric."""
    data = registry.get("dataset", "dsprites_procedural").factory(
        registry.get("dataset", "dsprites_procedural").make_config({})
    )
    model, device = Linear(), torch.device("cpu")
    params = {"dci": {"num_train": 60, "num_test": 30}, "mig": {"num_train": 100}}
    scorers = [("metric", name, registry.get("metric", name).factory(registry.get("metric", name).make_config(p))) for name, p in params.items()]
    scores = evaluation.evaluate(model, data, scorers, ["mean"], device=device, evaluation_seed=2, seed_convention=convention)
    rep_fn = evaluation.representation_function(model, "mean", device)
    for name, p in params.items():
        if convention == "per_metric":
            seed, study = evaluation.metric_seed(2, name), False
        else:
            seed, study = (evaluation.study_seeds(2)["mean", name] if convention == "study" else 2), True
        expected = score_representation(name, data, rep_fn, seed=seed, study_convention=study, registry=registry, **p)
        assert {k: v for k, v in scores.items() if k.startswith(f"eval/mean/{name}/")} == {
            f"eval/mean/{name}/{k}": v for k, v in expected.items()
        }
