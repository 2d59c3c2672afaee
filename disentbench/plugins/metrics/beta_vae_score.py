"""BetaVAE disentanglement score (Higgins et al. 2017), as the study computes it (spec section 4, "BetaVAE score").

One training point: draw a factor index k uniformly, draw two batches of
``batch_size`` factor vectors, copy column k of the first batch into the
second, render both batches, and take

    feature = mean over the batch of |r(x1) - r(x2)|   (a d-vector, no normalisation),
    label   = k.

A ``sklearn.linear_model.LogisticRegression(random_state=random_state)`` with
scikit-learn's default arguments is fitted on ``num_train`` points; the score is
its accuracy on ``num_eval`` fresh points (``eval_accuracy``);
``train_accuracy`` is reported as well. The defaults of ``LogisticRegression``
depend on the scikit-learn version (liblinear one-vs-rest before 0.22, lbfgs
multinomial since), so the score does too.

Draw order (equal to the reference's for the same ``numpy.random.RandomState``):
the whole training set is drawn point by point (k, factors of batch 1, factors
of batch 2, observations of batch 1, observations of batch 2), then the
classifier is fitted, then the evaluation set is drawn the same way.

Speed: the reference calls the representation function twice per point, on
``batch_size`` observations each: 2 x 64 x 15000 = 1.92M observations in 30000
calls. Here the observations of ``encoding_batch_size // (2 * batch_size)``
consecutive points are drawn first, in exactly the order above, and encoded in
one call. This is valid because encoding never touches ``random_state`` and no
draw depends on a code, so the random stream is consumed identically; scores
are unchanged as long as the representation maps each observation to the same
code whatever batch it arrives in (true for the mean representation up to the
encoder's own floating-point batch effects: some GPU kernels round differently
at different batch sizes). For disentbench's seeded *sampled* representation,
the noise an observation gets depends on how observations are grouped into
calls, so its scores are reproducible for a fixed ``encoding_batch_size`` but
change with it (the study's sampled representation was unseeded anyway). A
metric in which a draw depends on an earlier code could not be batched this way.

The logistic regression is fitted with BLAS limited to one thread
(``threadpoolctl``): same coefficients, but several times faster where threaded
BLAS would spin on a busy machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, Metric, PluginConfig, hookimpl
from disentbench.core.evaluation.sampling import check_random_state, encode

RepresentationFunction = Callable[[np.ndarray], np.ndarray]


class BetaVAEScoreConfig(PluginConfig):
    batch_size: int = Field(64, ge=1, description="Pairs of observations averaged into one training point (study: 64).")
    num_train: int = Field(10000, ge=1, description="Points the logistic regression is trained on (study: 10000).")
    num_eval: int = Field(5000, ge=1, description="Fresh points the classifier is scored on (study: 5000).")
    encoding_batch_size: int = Field(
        4096,
        ge=1,
        description=(
            "Observations passed to the representation function per call (rounded down to whole points, "
            "at least one point = 2 x batch_size). Speed and memory only: not a study parameter, and scores "
            "of a deterministic representation do not depend on it."
        ),
    )


def draw_point(
    data: GroundTruthData, batch_size: int, random_state: np.random.RandomState
) -> tuple[int, np.ndarray, np.ndarray]:
    """One point's label k and its two observation batches, in the reference's draw order."""
    factor_index = random_state.randint(data.num_factors)
    factors1 = data.sample_factors(batch_size, random_state)
    factors2 = data.sample_factors(batch_size, random_state)
    factors2[:, factor_index] = factors1[:, factor_index]
    observations1 = data.sample_observations_from_factors(factors1, random_state)
    observations2 = data.sample_observations_from_factors(factors2, random_state)
    return factor_index, observations1, observations2


def generate_training_batch(
    data: GroundTruthData,
    representation_function: RepresentationFunction,
    batch_size: int,
    num_points: int,
    random_state: np.random.RandomState,
    encoding_batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(num_points, d)`` (float64) and labels ``(num_points,)`` of ``num_points`` points.

    Observations of several consecutive points are encoded in one call (see the
    module docstring); each feature is still the mean over that point's own
    ``(batch_size, d)`` block of absolute code differences, computed exactly as
    for a per-point call.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    points_per_call = max(1, encoding_batch_size // (2 * batch_size))
    labels = np.zeros(num_points, dtype=np.int64)
    features = None  # width known after the first encoding
    for start in range(0, num_points, points_per_call):
        stop = min(start + points_per_call, num_points)
        observations = []
        for i in range(start, stop):
            labels[i], observations1, observations2 = draw_point(data, batch_size, random_state)
            observations += [observations1, observations2]
        codes = encode(representation_function, np.concatenate(observations))
        if features is None:
            features = np.zeros((num_points, codes.shape[1]))
        for offset, i in enumerate(range(start, stop)):
            first = 2 * offset * batch_size
            codes1 = codes[first : first + batch_size]
            codes2 = codes[first + batch_size : first + 2 * batch_size]
            features[i] = np.mean(np.abs(codes1 - codes2), axis=0)
    if features is None:  # num_points >= 1, so the loop encoded at least once
        raise RuntimeError("no points were encoded")
    return features, labels


def compute_beta_vae_score(
    data: GroundTruthData,
    representation_function: RepresentationFunction,
    random_state: np.random.RandomState,
    config: BetaVAEScoreConfig | None = None,
) -> dict[str, float]:
    """Keys ``train_accuracy`` and ``eval_accuracy`` (the score)."""
    from sklearn.linear_model import LogisticRegression  # lazy: sklearn is slow to import
    from threadpoolctl import threadpool_limits

    config = config if config is not None else BetaVAEScoreConfig()
    check_random_state(random_state)
    train_features, train_labels = generate_training_batch(
        data, representation_function, config.batch_size, config.num_train, random_state, config.encoding_batch_size
    )
    # The random state is handed to the classifier as the reference does; the
    # default solver (lbfgs) draws nothing from it, and the evaluation set is
    # drawn only after fitting in any case, so the stream stays the reference's.
    model = LogisticRegression(random_state=random_state)
    # One BLAS thread: on a (num_train, d) problem threaded BLAS only adds
    # spinning threads (5x slower on a busy 2-core machine; same coefficients).
    with threadpool_limits(limits=1):
        model.fit(train_features, train_labels)
    train_accuracy = np.mean(model.predict(train_features) == train_labels)
    eval_features, eval_labels = generate_training_batch(
        data, representation_function, config.batch_size, config.num_eval, random_state, config.encoding_batch_size
    )
    eval_accuracy = model.score(eval_features, eval_labels)
    return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(eval_accuracy)}


class BetaVAEScore(Metric):
    """The BetaVAE score metric, configured by :class:`BetaVAEScoreConfig`."""

    name = "beta_vae_score"
    description = "BetaVAE score (Higgins et al. 2017): logistic-regression accuracy predicting the fixed factor from mean |code differences|"
    config_class = BetaVAEScoreConfig
    config: BetaVAEScoreConfig

    #: the score a summary table shows
    headline = ("eval_accuracy",)

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: RepresentationFunction,
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        return compute_beta_vae_score(data, representation_function, random_state, self.config)


@hookimpl
def register_metrics(register):
    register(BetaVAEScore)
