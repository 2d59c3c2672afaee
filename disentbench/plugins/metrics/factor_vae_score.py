"""FactorVAE disentanglement score (Kim & Mnih 2018), as the study computes it (spec section 4).

1. Global variance (ddof=1) of each code dimension over ``num_variance_estimate``
   random observations; dimensions whose standard deviation is below
   ``prune_threshold`` are inactive.
2. A vote: pick a factor k, draw ``batch_size`` factor vectors that all share
   the value of factor k, encode them, and vote for the active dimension with
   the smallest local variance (ddof=1) relative to its global variance.
3. A majority-vote classifier maps each dimension to the factor that won it
   most often on ``num_train`` votes; accuracy is the fraction of votes it gets
   right, on the training votes and on ``num_eval`` fresh ones.

Random draws happen in the reference's order (global-variance observations
first, then each vote's factor index, factors and observations), so scores
equal the reference's for the same ``numpy.random.RandomState``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, Metric, PluginConfig, hookimpl
from disentbench.core.evaluation.sampling import check_random_state, encode, encode_in_batches

RepresentationFunction = Callable[[np.ndarray], np.ndarray]


class FactorVAEScoreConfig(PluginConfig):
    batch_size: int = Field(64, ge=2, description="Observations per vote, and per encoding call for the global variance (study: 64).")
    num_train: int = Field(10000, ge=1, description="Votes used to build the majority-vote classifier (study: 10000).")
    num_eval: int = Field(5000, ge=1, description="Fresh votes the classifier is scored on (study: 5000).")
    num_variance_estimate: int = Field(
        10000, ge=2, description="Random observations used for the global code variances (study: 10000)."
    )
    prune_threshold: float = Field(
        0.05, ge=0, description="Code dimensions with global standard deviation below this are inactive (study: 0.05)."
    )


def compute_global_variances(
    data: GroundTruthData,
    representation_function: RepresentationFunction,
    num_points: int,
    random_state: np.random.RandomState,
    batch_size: int = 64,
) -> np.ndarray:
    """Variance (ddof=1) of each code dimension over ``num_points`` random observations: ``(d,)``.

    All observations are drawn first, then encoded in chunks of ``batch_size``.
    """
    observations = data.sample_observations(num_points, random_state)
    codes = encode_in_batches(representation_function, observations, batch_size)
    return np.var(codes, axis=0, ddof=1)


def active_dimensions(variances: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Boolean mask of the code dimensions whose standard deviation reaches ``threshold``."""
    return np.sqrt(variances) >= threshold


def generate_votes(
    data: GroundTruthData,
    representation_function: RepresentationFunction,
    batch_size: int,
    num_points: int,
    random_state: np.random.RandomState,
    global_variances: np.ndarray,
    active: np.ndarray,
) -> np.ndarray:
    """Vote counts ``(k, d)``: entry [f, a] counts votes of factor f for active dimension a.

    The column index a is the position within the *active* dimensions, not
    the original code dimension (the reference's indexing); with pruned
    dimensions the last columns therefore stay zero. Accuracies are
    unaffected since the classifier is built and applied on the same indexing.
    """
    votes = np.zeros((data.num_factors, len(global_variances)), dtype=np.int64)
    active_global = global_variances[active]
    for _ in range(num_points):
        factor_index = random_state.randint(data.num_factors)
        factors = data.sample_factors(batch_size, random_state)
        factors[:, factor_index] = factors[0, factor_index]
        observations = data.sample_observations_from_factors(factors, random_state)
        codes = encode(representation_function, observations)
        local_variances = np.var(codes, axis=0, ddof=1)
        votes[factor_index, np.argmin(local_variances[active] / active_global)] += 1
    return votes


def majority_vote_accuracy(votes: np.ndarray, classifier: np.ndarray) -> float:
    """Fraction of votes whose factor is the one ``classifier`` (factor per dimension) predicts."""
    return float(np.sum(votes[classifier, np.arange(votes.shape[1])]) / np.sum(votes))


def compute_factor_vae_score(
    data: GroundTruthData,
    representation_function: RepresentationFunction,
    random_state: np.random.RandomState,
    config: FactorVAEScoreConfig | None = None,
) -> dict[str, float]:
    """Keys ``train_accuracy``, ``eval_accuracy`` (the score) and ``num_active_dims``."""
    config = config if config is not None else FactorVAEScoreConfig()
    check_random_state(random_state)
    global_variances = compute_global_variances(
        data, representation_function, config.num_variance_estimate, random_state, config.batch_size
    )
    active = active_dimensions(global_variances, config.prune_threshold)
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    train_votes = generate_votes(
        data, representation_function, config.batch_size, config.num_train, random_state, global_variances, active
    )
    classifier = np.argmax(train_votes, axis=0)
    eval_votes = generate_votes(
        data, representation_function, config.batch_size, config.num_eval, random_state, global_variances, active
    )
    return {
        "train_accuracy": majority_vote_accuracy(train_votes, classifier),
        "eval_accuracy": majority_vote_accuracy(eval_votes, classifier),
        # Reference quirk, kept so the logged values match the study's: this is
        # the length of the activity mask, i.e. the total number of code
        # dimensions, not the number of active ones (0 only when none is active).
        "num_active_dims": len(active),
    }


class FactorVAEScore(Metric):
    """The FactorVAE score metric, configured by :class:`FactorVAEScoreConfig`."""

    name = "factor_vae_score"
    description = "FactorVAE score (Kim & Mnih 2018): majority-vote accuracy of the least-varying normalised code dim under a fixed factor"
    config_class = FactorVAEScoreConfig
    config: FactorVAEScoreConfig

    #: the score a summary table shows
    headline = ("eval_accuracy",)

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: RepresentationFunction,
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        return compute_factor_vae_score(data, representation_function, random_state, self.config)


@hookimpl
def register_metrics(register):
    register(FactorVAEScore)
