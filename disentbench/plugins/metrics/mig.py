"""Mutual Information Gap (Chen et al. 2018), as the study computes it (spec section 4, "MIG").

Codes are discretised per dimension into ``num_bins`` equal-width bins; with
m[i, j] = I(code_i; y_j) and H_j = H(y_j) (both in nats, from discrete counts),

    MIG = mean_j (m_(1)j - m_(2)j) / H_j,

where m_(1)j >= m_(2)j are the two largest entries of column j. A factor that is
constant in the sample has H_j = 0, and its term (hence the score) is nan, as
in the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, Metric, PluginConfig, hookimpl
from disentbench.core.evaluation.sampling import (
    check_random_state,
    discrete_entropy,
    discrete_mutual_info,
    generate_batch_factor_code,
    histogram_discretize,
)


class MIGConfig(PluginConfig):
    num_train: int = Field(10000, ge=1, description="Number of points drawn to estimate the mutual information (study: 10000).")
    batch_size: int = Field(16, ge=1, description="Observations encoded per call of the representation function (study: 16).")
    num_bins: int = Field(20, ge=1, description="Equal-width bins per code dimension for discretisation (study: 20).")


def mig_per_factor(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Normalised gap (m_(1)j - m_(2)j) / H_j for each factor j: ``(k,)``."""
    codes = np.asarray(codes)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2:
        raise ValueError(f"need codes (n, d) and factors (n, k), got {codes.shape} and {factors.shape}")
    if codes.shape[1] < 2:
        raise ValueError(
            f"MIG needs at least 2 code dimensions (it is the gap between the two most informative codes), "
            f"got {codes.shape[1]}"
        )
    mutual_info = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    entropy = discrete_entropy(factors)
    top_two = np.sort(mutual_info, axis=0)[::-1][:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (top_two[0] - top_two[1]) / entropy


def compute_mig_from_codes(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> dict[str, float]:
    """MIG of codes ``(n, d)`` against integer factors ``(n, k)``; key ``discrete_mig``."""
    return {"discrete_mig": float(np.mean(mig_per_factor(codes, factors, num_bins)))}


class MIG(Metric):
    """The MIG metric: draws ``num_train`` points from the dataset, then scores their codes."""

    name = "mig"
    description = "Mutual Information Gap (Chen et al. 2018): mean normalised MI gap of the top-2 histogram-discretised codes per factor"
    config_class = MIGConfig
    config: MIGConfig

    #: the score a summary table shows
    headline = ("discrete_mig",)

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
        return compute_mig_from_codes(codes, factors, self.config.num_bins)

    def score_codes(self, codes, factors, codes_test=None, factors_test=None, random_state=None) -> dict[str, float]:
        """The array core (``disentbench.score_codes``); MIG uses no test split and no randomness."""
        return compute_mig_from_codes(codes, factors, self.config.num_bins)


@hookimpl
def register_metrics(register):
    register(MIG)
