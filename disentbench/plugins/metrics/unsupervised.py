"""Unsupervised scores of a representation, as the study computes them
(spec section 4, "Unsupervised scores"). They use the codes only, not the factors.

With Sigma the sample covariance of the codes (ddof 1) and D = diag(Sigma):

* ``gaussian_total_correlation`` = 0.5 (sum_i log Sigma_ii - log det Sigma),
  i.e. KL(N(0, Sigma) || N(0, D)), the total correlation of a Gaussian with
  the codes' covariance;
* ``gaussian_wasserstein_correlation`` = 2 tr Sigma - 2 tr sqrtm(D Sigma), the
  squared 2-Wasserstein distance between N(0, Sigma) and N(0, D) (D Sigma is
  similar to D^1/2 Sigma D^1/2, and tr D = tr Sigma); ``_norm`` divides it by
  tr Sigma;
* ``mutual_info_score`` = mean over ordered pairs i != j of the mutual
  information between histogram-discretised codes i and j (``num_bins`` bins).
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


class UnsupervisedConfig(PluginConfig):
    num_train: int = Field(10000, ge=2, description="Points drawn to estimate the covariance and mutual information (study: 10000).")
    batch_size: int = Field(16, ge=1, description="Observations encoded per call of the representation function (study: 16).")
    num_bins: int = Field(20, ge=1, description="Equal-width bins per code dimension for the mutual information (study: 20).")


def gaussian_total_correlation(covariance: np.ndarray) -> float:
    """KL(N(0, Sigma) || N(0, diag Sigma)) in nats; inf for a singular Sigma."""
    covariance = np.asarray(covariance, dtype=np.float64)
    return float(0.5 * (np.sum(np.log(np.diag(covariance))) - np.linalg.slogdet(covariance)[1]))


def gaussian_wasserstein_correlation(covariance: np.ndarray) -> float:
    """W2^2 between N(0, Sigma) and N(0, diag Sigma): 2 tr Sigma - 2 tr sqrtm(diag(Sigma) Sigma)."""
    from scipy.linalg import sqrtm

    covariance = np.asarray(covariance, dtype=np.float64)
    root = sqrtm(covariance * np.expand_dims(np.diag(covariance), axis=1))
    # The eigenvalues of diag(Sigma) Sigma are real and >= 0, so any imaginary
    # part of the root is round-off (older scipy returned complex arrays).
    return float(np.real(2 * np.trace(covariance) - 2 * np.trace(root)))


def mean_pairwise_mutual_info(codes: np.ndarray, num_bins: int = 20) -> float:
    """Mean mutual information (nats) between distinct discretised code dimensions; nan for one dimension."""
    discretized = histogram_discretize(codes, num_bins)
    mutual_info = discrete_mutual_info(discretized, discretized)
    np.fill_diagonal(mutual_info, 0)
    num_codes = mutual_info.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(mutual_info) / (num_codes**2 - num_codes))


def compute_unsupervised_from_codes(codes: np.ndarray, num_bins: int = 20) -> dict[str, float]:
    """The four unsupervised scores of codes ``(n, d)``."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) < 2:
        raise ValueError(f"need codes (n, d) with n >= 2, got shape {codes.shape}")
    covariance = np.atleast_2d(np.cov(codes.T))
    wasserstein = gaussian_wasserstein_correlation(covariance)
    return {
        "gaussian_total_correlation": gaussian_total_correlation(covariance),
        "gaussian_wasserstein_correlation": wasserstein,
        "gaussian_wasserstein_correlation_norm": float(wasserstein / np.sum(np.diag(covariance))),
        "mutual_info_score": mean_pairwise_mutual_info(codes, num_bins),
    }


class Unsupervised(Metric):
    """The unsupervised scores: draws ``num_train`` points and scores their codes (factors unused)."""

    name = "unsupervised"
    description = (
        "Unsupervised scores: Gaussian total correlation, Gaussian Wasserstein correlation (and "
        "normalised), mean pairwise mutual information between discretised codes"
    )
    config_class = UnsupervisedConfig
    config: UnsupervisedConfig

    #: the score a summary table shows
    headline = ("gaussian_total_correlation",)

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: Callable[[np.ndarray], np.ndarray],
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        check_random_state(random_state)
        codes, _ = generate_batch_factor_code(
            data, representation_function, self.config.num_train, random_state, self.config.batch_size
        )
        return compute_unsupervised_from_codes(codes, self.config.num_bins)

    def score_codes(self, codes, factors=None, codes_test=None, factors_test=None, random_state=None) -> dict[str, float]:
        """The array core (``disentbench.score_codes``); factors, test split and ``random_state`` are unused."""
        return compute_unsupervised_from_codes(codes, self.config.num_bins)


@hookimpl
def register_metrics(register):
    register(Unsupervised)
