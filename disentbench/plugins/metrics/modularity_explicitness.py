"""Modularity and explicitness (Ridgeway & Mozer 2018), as the study computes them
(spec section 4, "Modularity / Explicitness").

Modularity: with m ``(d, k)`` the mutual information between each
histogram-discretised code (``num_bins`` equal-width bins, train split) and
each factor, and theta_i = max_j m_ij,

    delta_i = (sum_j m_ij^2 - theta_i^2) / (theta_i^2 (k - 1)),
    modularity = mean_i (1 - delta_i),

where a code with theta_i = 0 scores 0 (with one factor the score is nan, as in
the reference).

Explicitness: codes are standardised with the train split's mean and standard
deviation (ddof 0); per factor, ``sklearn.linear_model.LogisticRegression()``
(sklearn's defaults) is fitted on the train split, and the ROC-AUC of its
``predict_proba`` against the one-hot labels (sklearn's default macro average
over classes) is taken on the train and on the test split; both are averaged
over factors. LogisticRegression's defaults depend on the sklearn version
(liblinear one-vs-rest before 0.22, lbfgs multinomial since), so explicitness
equals the reference only under the same sklearn.

Divergence from the reference: a code dimension that is exactly constant in the
train split makes the reference divide by a zero standard deviation and fail;
here it is centred and left unscaled (it stays 0), so such codes get a score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, Metric, PluginConfig, hookimpl
from disentbench.core.evaluation.sampling import (
    check_random_state,
    discrete_mutual_info,
    generate_batch_factor_code,
    histogram_discretize,
)


class ModularityExplicitnessConfig(PluginConfig):
    num_train: int = Field(10000, ge=1, description="Points drawn for the mutual information and to fit the classifiers (study: 10000).")
    num_test: int = Field(5000, ge=1, description="Fresh points for the test explicitness (study: 5000).")
    batch_size: int = Field(16, ge=1, description="Observations encoded per call of the representation function (study: 16).")
    num_bins: int = Field(20, ge=1, description="Equal-width bins per code dimension for the mutual information (study: 20).")


def modularity(mutual_information: np.ndarray) -> float:
    """Modularity of a mutual-information matrix ``(d, k)`` (codes x factors)."""
    squared = np.square(np.asarray(mutual_information, dtype=np.float64))
    max_squared = np.max(squared, axis=1)
    numerator = np.sum(squared, axis=1) - max_squared
    denominator = max_squared * (squared.shape[1] - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_code = 1.0 - numerator / denominator
    per_code[max_squared == 0.0] = 0.0
    return float(np.mean(per_code))


def standardize(codes: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None):
    """``((codes - mean) / std, mean, std)`` per column; mean and std (ddof 0) from ``codes`` unless given.

    A zero standard deviation is replaced by 1 (the reference would divide by zero).
    """
    codes = np.asarray(codes)
    if mean is None:
        mean = np.mean(codes, axis=0)
    if std is None:
        std = np.std(codes, axis=0)
        std = np.where(std == 0.0, 1.0, std)
    return (codes - mean) / std, mean, std


def explicitness_per_factor(codes, factor, codes_test, factor_test) -> tuple[float, float]:
    """Macro ROC-AUC (train, test) of a default logistic regression predicting ``factor`` from standardised codes."""
    from sklearn.linear_model import LogisticRegression  # lazy: sklearn is slow to import
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import MultiLabelBinarizer

    classifier = LogisticRegression().fit(codes, factor)
    # Each split is binarised on its own labels, as in the reference: a class
    # missing from one split makes the shapes disagree and roc_auc_score raise.
    auc_train = roc_auc_score(MultiLabelBinarizer().fit_transform(factor[:, None]), classifier.predict_proba(codes))
    auc_test = roc_auc_score(
        MultiLabelBinarizer().fit_transform(factor_test[:, None]), classifier.predict_proba(codes_test)
    )
    return float(auc_train), float(auc_test)


def compute_modularity_explicitness_from_codes(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    num_bins: int = 20,
) -> dict[str, float]:
    """Keys ``modularity_score``, ``explicitness_score_train``, ``explicitness_score_test``."""
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes_test is None or factors_test is None:
        raise ValueError("explicitness needs a test split: pass codes_test and factors_test")
    codes_test, factors_test = np.asarray(codes_test), np.asarray(factors_test)
    for name, (c, f) in {"train": (codes, factors), "test": (codes_test, factors_test)}.items():
        if c.ndim != 2 or f.ndim != 2 or len(c) != len(f):
            raise ValueError(f"need {name} codes (n, d) and factors (n, k) with the same n, got {c.shape} and {f.shape}")
    if codes_test.shape[1] != codes.shape[1] or factors_test.shape[1] != factors.shape[1]:
        raise ValueError(
            f"train and test splits differ in width: codes {codes.shape} vs {codes_test.shape}, "
            f"factors {factors.shape} vs {factors_test.shape}"
        )
    mutual_information = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    codes_standardized, mean, std = standardize(codes)
    codes_test_standardized, _, _ = standardize(codes_test, mean, std)
    aucs = np.array(
        [
            explicitness_per_factor(codes_standardized, factors[:, j], codes_test_standardized, factors_test[:, j])
            for j in range(factors.shape[1])
        ]
    )
    return {
        "modularity_score": modularity(mutual_information),
        "explicitness_score_train": float(np.mean(aucs[:, 0])),
        "explicitness_score_test": float(np.mean(aucs[:, 1])),
    }


class ModularityExplicitness(Metric):
    """The modularity/explicitness metric: draws ``num_train`` then ``num_test`` points, then scores their codes."""

    name = "modularity_explicitness"
    description = (
        "Modularity and explicitness (Ridgeway & Mozer 2018): how much each code's mutual information "
        "concentrates on one factor, and the ROC-AUC of logistic regression from all codes to each factor"
    )
    config_class = ModularityExplicitnessConfig
    config: ModularityExplicitnessConfig

    #: the score a summary table shows
    headline = ("modularity_score",)

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: Callable[[np.ndarray], np.ndarray],
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        check_random_state(random_state)
        codes, factors = generate_batch_factor_code(
            data, representation_function, self.config.num_train, random_state, self.config.batch_size
        )
        codes_test, factors_test = generate_batch_factor_code(
            data, representation_function, self.config.num_test, random_state, self.config.batch_size
        )
        return compute_modularity_explicitness_from_codes(codes, factors, codes_test, factors_test, self.config.num_bins)

    def score_codes(self, codes, factors, codes_test=None, factors_test=None, random_state=None) -> dict[str, float]:
        """The array core (``disentbench.score_codes``); deterministic, ``random_state`` is unused."""
        return compute_modularity_explicitness_from_codes(codes, factors, codes_test, factors_test, self.config.num_bins)


@hookimpl
def register_metrics(register):
    register(ModularityExplicitness)
