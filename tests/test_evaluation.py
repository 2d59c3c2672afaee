"""Evaluation seeding: which draws a metric sees, whatever else is scored with it."""

import numpy as np
import torch
from helpers import Squares

from disentbench.core.evaluation.evaluate import evaluate
from disentbench.core.training.trainer import build_model
from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig


def _model(data):
    return build_model(BetaVAE, BetaVAEConfig(beta=2.0, num_latent=3), data.observation_shape, 3, torch.device("cpu"))


def _recorder(seen):
    """A scorer that records the codes of 8 observations it draws with its random state."""

    def score(data, representation_function, random_state):
        index = random_state.randint(len(data.images), size=8)
        observations = data.images[index].astype(np.float32)
        seen.append((index, representation_function(observations)))
        return {"mean_code": float(seen[-1][1].mean())}

    return score


def _consumer(data, representation_function, random_state):
    """A scorer that uses the sampled noise on a number of codes of its own."""
    representation_function(data.images[: 1 + random_state.randint(5)].astype(np.float32))
    return {"x": 0.0}


def test_a_metric_sees_the_same_draws_whichever_metrics_run_before_it():
    data = Squares()
    model = _model(data)
    alone, after, other_seed = [], [], []
    kwargs = dict(device=torch.device("cpu"), representations=["mean", "sampled"])
    scores_alone = evaluate(model, data, [("metric", "rec", _recorder(alone))], evaluation_seed=5, **kwargs)
    scores_after = evaluate(
        model, data, [("metric", "first", _consumer), ("metric", "rec", _recorder(after))], evaluation_seed=5, **kwargs
    )
    evaluate(model, data, [("metric", "rec", _recorder(other_seed))], evaluation_seed=6, **kwargs)
    # Reproducible in any company: the sampled codes (noise included) are the same alone and after another metric.
    for (i_a, codes_a), (i_b, codes_b) in zip(alone, after):
        assert np.array_equal(i_a, i_b)
        assert np.array_equal(codes_a, codes_b)
    assert scores_alone["eval/sampled/rec/mean_code"] == scores_after["eval/sampled/rec/mean_code"]
    # Mean and sampled are scored on the same observations (a paired comparison), and the noise is there.
    (i_mean, mean_codes), (i_sampled, sampled_codes) = alone
    assert np.array_equal(i_mean, i_sampled)
    assert not np.allclose(mean_codes, sampled_codes)
    # Another evaluation seed draws other observations.
    assert not np.array_equal(i_mean, other_seed[0][0])
