"""Separated Attribute Predictability (Kumar et al. 2018), as the study computes it
(spec section 4, "SAP").

A score matrix S ``(d, k)`` rates how well code i alone predicts factor j:

* discrete factors (the study's setting): S[i, j] is the test accuracy of
  ``sklearn.svm.LinearSVC(C=0.01, class_weight="balanced")`` trained on code i
  alone (one feature) to predict y_j;
* continuous factors: S[i, j] = cov(c_i, y_j)^2 / (var c_i var y_j) (ddof 1),
  the squared correlation, or 0 when var c_i <= 1e-12.

SAP = mean_j (S_(1)j - S_(2)j), the gap between the two best codes per factor.

sklearn note: the reference constructs ``LinearSVC`` with the library's
defaults for everything but ``C`` and ``class_weight``, so its solver depends on
the installed sklearn. Up to sklearn 1.4 the default was ``dual=True`` (liblinear's
dual coordinate descent, which shuffles with numpy's unseeded global random
state); since 1.5 it is ``dual="auto"``, which for one feature and many samples
picks the deterministic primal solver. disentbench passes the same arguments,
so it equals the reference run under the same sklearn. Against numbers made
with an old sklearn (the study's) expect differences of the order of one test
point per entry of S (SAP differences ~1e-4 were measured).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, Metric, PluginConfig, hookimpl
from disentbench.core.evaluation.sampling import check_random_state, generate_batch_factor_code


class SAPConfig(PluginConfig):
    num_train: int = Field(10000, ge=1, description="Points drawn to fit the classifiers / estimate correlations (study: 10000).")
    num_test: int = Field(5000, ge=1, description="Fresh points the classifiers are scored on (study: 5000).")
    batch_size: int = Field(16, ge=1, description="Observations encoded per call of the representation function (study: 16).")
    continuous_factors: bool = Field(
        False,
        description="Score by squared correlation instead of per-code linear SVM accuracy (study: False).",
    )


def _squared_correlation(code: np.ndarray, factor: np.ndarray) -> float:
    covariance = np.cov(code, factor, ddof=1)
    code_variance = covariance[0, 0]
    if code_variance > 1e-12:
        return covariance[0, 1] ** 2 * 1.0 / (code_variance * covariance[1, 1])
    return 0.0


def _svm_accuracy(code, factor, code_test, factor_test) -> float:
    from sklearn.svm import LinearSVC  # lazy: sklearn is slow to import

    classifier = LinearSVC(C=0.01, class_weight="balanced")
    classifier.fit(code[:, np.newaxis], factor)
    return float(np.mean(classifier.predict(code_test[:, np.newaxis]) == factor_test))


def sap_score_matrix(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray | None = None,
    factors_test: np.ndarray | None = None,
    continuous_factors: bool = False,
) -> np.ndarray:
    """S ``(d, k)``: how well each single code predicts each factor (see the module docstring)."""
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(f"need codes (n, d) and factors (n, k) with the same n, got {codes.shape} and {factors.shape}")
    if not continuous_factors:
        if codes_test is None or factors_test is None:
            raise ValueError("SAP with discrete factors needs a test split: pass codes_test and factors_test")
        codes_test, factors_test = np.asarray(codes_test), np.asarray(factors_test)
        if (
            codes_test.shape[1] != codes.shape[1]
            or factors_test.shape[1] != factors.shape[1]
            or len(codes_test) != len(factors_test)
        ):
            raise ValueError(
                f"test split does not match: codes {codes.shape} vs {codes_test.shape}, "
                f"factors {factors.shape} vs {factors_test.shape}"
            )
    num_codes, num_factors = codes.shape[1], factors.shape[1]
    scores = np.zeros((num_codes, num_factors))
    for i in range(num_codes):
        for j in range(num_factors):
            if continuous_factors:
                scores[i, j] = _squared_correlation(codes[:, i], factors[:, j])
            else:
                if codes_test is None or factors_test is None:  # checked above for discrete factors
                    raise RuntimeError("SAP with discrete factors needs a test split")
                scores[i, j] = _svm_accuracy(codes[:, i], factors[:, j], codes_test[:, i], factors_test[:, j])
    return scores


def top_two_gap(scores: np.ndarray) -> float:
    """Mean over columns of (largest - second largest) entry."""
    ranked = np.sort(scores, axis=0)
    if ranked.shape[0] < 2:
        raise ValueError(
            f"SAP needs at least 2 code dimensions (it is a gap between the two best), got {ranked.shape[0]}"
        )
    return float(np.mean(ranked[-1, :] - ranked[-2, :]))


def compute_sap_from_codes(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray | None = None,
    factors_test: np.ndarray | None = None,
    continuous_factors: bool = False,
) -> dict[str, float]:
    """SAP of codes ``(n, d)`` against factors ``(n, k)``; key ``SAP_score``."""
    return {"SAP_score": top_two_gap(sap_score_matrix(codes, factors, codes_test, factors_test, continuous_factors))}


class SAP(Metric):
    """The SAP metric: draws ``num_train`` then ``num_test`` points, then scores their codes."""

    name = "sap"
    description = (
        "SAP score (Kumar et al. 2018): mean gap between the two codes that best predict each factor "
        "(per-code linear SVM accuracy, or squared correlation for continuous factors)"
    )
    config_class = SAPConfig
    config: SAPConfig

    #: the score a summary table shows
    headline = ("SAP_score",)

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
        if self.config.continuous_factors:
            # The reference also draws (and then ignores) a test split here; it is
            # the last use of the random state, so skipping it changes no score.
            return compute_sap_from_codes(codes, factors, continuous_factors=True)
        codes_test, factors_test = generate_batch_factor_code(
            data, representation_function, self.config.num_test, random_state, self.config.batch_size
        )
        return compute_sap_from_codes(codes, factors, codes_test, factors_test)

    def score_codes(self, codes, factors, codes_test=None, factors_test=None, random_state=None) -> dict[str, float]:
        """The array core (``disentbench.score_codes``); deterministic, ``random_state`` is unused."""
        return compute_sap_from_codes(codes, factors, codes_test, factors_test, self.config.continuous_factors)


@hookimpl
def register_metrics(register):
    register(SAP)
