"""DCI, SAP, modularity/explicitness and the unsupervised scores: hand-computed values,
known properties on synthetic ground truth, determinism and draw order."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.evaluation.api import score_codes, score_representation
from disentbench.core.evaluation.sampling import generate_batch_factor_code
from disentbench.plugins.metrics import dci, sap, unsupervised
from disentbench.plugins.metrics import modularity_explicitness as modexp

FACTOR_SIZES = (2, 3, 4)  # small: gradient boosting fits one tree per class and stage


class TinyFactors(GroundTruthData):
    """3 factors (sizes 2, 3, 4); each 1x2x2 image stores the factor values in its first 3 pixels."""

    name = "tiny_factors"
    factor_names = ("a", "b", "c")
    factor_sizes = FACTOR_SIZES
    pixel_scale = 1.0

    def __init__(self):
        all_factors = self.factors_of(np.arange(self.num_observations))
        images = np.zeros((self.num_observations, 1, 2, 2), dtype=np.uint8)
        images.reshape(self.num_observations, 4)[:, :3] = all_factors
        self._images = images

    @property
    def images(self) -> np.ndarray:
        return self._images


def read_factors(observations: np.ndarray) -> np.ndarray:
    return observations.reshape(len(observations), -1)[:, :3].astype(np.float64)


# Orthogonal, every factor loads on every code dimension.
MIXING_ROTATION = np.column_stack(
    [np.ones(3) / math.sqrt(3), np.array([1.0, -1.0, 0.0]) / math.sqrt(2), np.array([1.0, 1.0, -2.0]) / math.sqrt(6)]
)


def standardized(factors: np.ndarray) -> np.ndarray:
    sizes = np.array(FACTOR_SIZES, dtype=np.float64)
    return (factors - (sizes - 1) / 2) / np.sqrt((sizes**2 - 1) / 12)


def perfect_codes(factors: np.ndarray) -> np.ndarray:
    """Each code is one factor: permuted, scaled, shifted (a monotone map per factor)."""
    return standardized(factors)[:, [2, 0, 1]] * np.array([3.0, -0.5, 10.0]) + np.array([1.0, 2.0, -3.0])


def rotated_codes(factors: np.ndarray) -> np.ndarray:
    """A rotation of the standardised factors plus a small smooth wobble (no exact ties between features)."""
    rotated = standardized(factors) @ MIXING_ROTATION
    return rotated + 0.01 * np.sin(3.0 * rotated[:, ::-1] + 0.5)


def perfect_code(observations):
    return perfect_codes(read_factors(observations))


def rotated_code(observations):
    return rotated_codes(read_factors(observations))


def draw_factors(num: int, random_state: np.random.RandomState) -> np.ndarray:
    return np.column_stack([random_state.randint(size, size=num) for size in FACTOR_SIZES])


@pytest.fixture(scope="module")
def data():
    return TinyFactors()


@pytest.fixture(scope="module")
def splits():
    """Train (600) and test (300) factors shared by the property tests."""
    random_state = np.random.RandomState(0)
    return draw_factors(600, random_state), draw_factors(300, random_state)


@pytest.fixture(scope="module")
def dci_scores(splits):
    factors, factors_test = splits[0][:400], splits[1][:200]  # gradient boosting is the slow part
    noise = np.random.RandomState(1)
    return {
        "perfect": dci.compute_dci_from_codes(
            perfect_codes(factors), factors, perfect_codes(factors_test), factors_test, np.random.RandomState(0)
        ),
        "rotated": dci.compute_dci_from_codes(
            rotated_codes(factors), factors, rotated_codes(factors_test), factors_test, np.random.RandomState(0)
        ),
        "noise": dci.compute_dci_from_codes(
            noise.randn(400, 3), factors, noise.randn(200, 3), factors_test, np.random.RandomState(0)
        ),
    }


# -- DCI: hand-computed ------------------------------------------------------------------------


def test_dci_from_hand_importance_matrix():
    # Codes 0, 1, 2 each inform one factor only; factor 1 is split evenly over codes 1 and 2.
    importance = np.array([[1.0, 0.0], [0.0, 0.5], [0.0, 0.5]])
    np.testing.assert_allclose(dci.disentanglement_per_code(importance), [1.0, 1.0, 1.0], atol=1e-9)
    # Factor 1's column is (0, 1/2, 1/2): entropy log 2 in base d = 3.
    np.testing.assert_allclose(
        dci.completeness_per_factor(importance), [1.0, 1.0 - math.log(2) / math.log(3)], atol=1e-9
    )
    scores = dci.scores_from_importance(importance)
    assert scores["disentanglement"] == pytest.approx(1.0, abs=1e-9)
    # Both factors carry half the total importance.
    assert scores["completeness"] == pytest.approx(1.0 - 0.5 * math.log(2) / math.log(3), abs=1e-9)


def test_dci_extremes_by_hand():
    assert dci.disentanglement(np.eye(2)) == pytest.approx(1.0, abs=1e-9)
    assert dci.completeness(np.eye(2)) == pytest.approx(1.0, abs=1e-9)
    uniform = np.full((3, 2), 0.5)
    assert dci.disentanglement(uniform) == pytest.approx(0.0, abs=1e-12)
    assert dci.completeness(uniform) == pytest.approx(0.0, abs=1e-12)
    # A code informing both factors equally, weighted by its share (1/2 of the total), next to a pure one.
    half = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert dci.disentanglement(half) == pytest.approx(0.5, abs=1e-9)
    # An all-zero matrix is weighted uniformly (the reference's rule): every entropy is maximal.
    assert dci.disentanglement(np.zeros((3, 2))) == pytest.approx(0.0, abs=1e-12)
    assert dci.completeness(np.zeros((3, 2))) == pytest.approx(0.0, abs=1e-12)


def test_dci_classifier_seed_reads_the_state_without_drawing():
    random_state = np.random.RandomState(5)
    before = random_state.get_state()
    seed = dci.classifier_seed(random_state)
    after = random_state.get_state()
    assert before[2] == after[2] and np.array_equal(before[1], after[1])
    assert 0 <= seed < 2**32 and seed == dci.classifier_seed(np.random.RandomState(5))
    assert seed != dci.classifier_seed(np.random.RandomState(6))
    random_state.randint(10)
    assert seed != dci.classifier_seed(random_state)
    assert dci.classifier_seed(None) == dci.classifier_seed(np.random.RandomState(0))


# -- DCI: properties -----------------------------------------------------------------------------


def test_dci_perfect_code_scores_top(dci_scores):
    scores = dci_scores["perfect"]
    assert set(scores) == {"disentanglement", "completeness", "informativeness_train", "informativeness_test"}
    assert scores["disentanglement"] > 0.95 and scores["completeness"] > 0.95
    assert scores["informativeness_train"] == 1.0 and scores["informativeness_test"] == 1.0


def test_dci_rotation_scores_lower(dci_scores):
    assert dci_scores["rotated"]["disentanglement"] < dci_scores["perfect"]["disentanglement"] - 0.3
    assert dci_scores["rotated"]["completeness"] < dci_scores["perfect"]["completeness"] - 0.3
    # The information is all still there, only spread over the codes.
    assert dci_scores["rotated"]["informativeness_test"] > 0.9


def test_dci_noise_is_at_chance(dci_scores):
    chance = np.mean([1.0 / size for size in FACTOR_SIZES])
    assert abs(dci_scores["noise"]["informativeness_test"] - chance) < 0.05
    assert dci_scores["noise"]["informativeness_train"] > dci_scores["noise"]["informativeness_test"]  # overfits
    # The trees use every code a little for every factor: nothing is disentangled.
    assert dci_scores["noise"]["disentanglement"] < 0.1 and dci_scores["noise"]["completeness"] < 0.1


@pytest.fixture(scope="module")
def tied_split(splits):
    """Two factors (sizes 2, 3), each code duplicated: every split is a tie between two features."""
    factors, factors_test = splits[0][:300, :2], splits[1][:200, :2]

    def codes_of(two_factors):
        return np.repeat(perfect_codes(np.column_stack([two_factors, two_factors[:, :1]]))[:, 1:], 2, axis=1)

    return codes_of(factors), factors, codes_of(factors_test), factors_test


def test_dci_is_deterministic_despite_tied_splits(tied_split):
    # The reference breaks those ties with numpy's global random state; here they follow the seed.
    def run(global_seed, n_jobs=1):
        np.random.seed(global_seed)  # the global state must not matter
        return dci.compute_dci_from_codes(*tied_split, np.random.RandomState(11), n_jobs=n_jobs)

    first = run(0)
    assert run(1) == first
    # Factors fitted in parallel threads from their precomputed stream positions: the same scores.
    assert run(2, n_jobs=2) == first


def test_dci_equals_the_unseeded_reference_after_global_seed(tied_split):
    """The reference fits GradientBoostingClassifier() per factor on numpy's global state."""
    from sklearn.ensemble import GradientBoostingClassifier

    codes, factors, codes_test, factors_test = tied_split
    np.random.seed(dci.classifier_seed(np.random.RandomState(11)))
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    test_accuracy = []
    for j in range(factors.shape[1]):
        model = GradientBoostingClassifier().fit(codes, factors[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        test_accuracy.append(np.mean(model.predict(codes_test) == factors_test[:, j]))
    ours = dci.compute_dci_from_codes(codes, factors, codes_test, factors_test, np.random.RandomState(11))
    assert ours["disentanglement"] == dci.disentanglement(importance)
    assert ours["completeness"] == dci.completeness(importance)
    assert ours["informativeness_test"] == np.mean(test_accuracy)


def test_dci_parallel_falls_back_when_draws_differ(tied_split, monkeypatch):
    expected = dci.compute_dci_from_codes(*tied_split, np.random.RandomState(12))
    wrong_count = dci.boosted_tree_draws
    monkeypatch.setattr(dci, "boosted_tree_draws", lambda labels: wrong_count(labels, 99))  # positions now wrong
    outcomes = []
    fit_parallel = dci._fit_parallel
    monkeypatch.setattr(dci, "_fit_parallel", lambda *args: outcomes.append(fit_parallel(*args)) or outcomes[-1])
    assert dci.compute_dci_from_codes(*tied_split, np.random.RandomState(12), n_jobs=2) == expected
    assert outcomes == [None]  # the parallel fits were detected as off-stream and redone in order


def test_dci_needs_a_test_split(splits):
    factors, _ = splits
    with pytest.raises(ValueError, match="test split"):
        dci.DCI().score_codes(perfect_codes(factors), factors)


# -- SAP -------------------------------------------------------------------------------------------


def test_sap_continuous_hand_computed():
    factors = np.array([[0, 0], [1, 0], [2, 1], [3, 1]])
    codes = np.column_stack(
        [
            -2.0 * factors[:, 0] + 1.0,  # factor 0, rescaled
            np.full(4, 7.0),  # constant: scores 0
            5.0 * factors[:, 1],  # factor 1, rescaled
        ]
    )
    # Squared correlations: centred y0 = (-3, -1, 1, 3)/2, y1 = (-1, -1, 1, 1)/2 give
    # corr(y0, y1)^2 = (sum y0 y1)^2 / (sum y0^2 sum y1^2) = 2^2 / (5 * 1) = 0.8.
    expected = np.array([[1.0, 0.8], [0.0, 0.0], [0.8, 1.0]])
    np.testing.assert_allclose(sap.sap_score_matrix(codes, factors, continuous_factors=True), expected, atol=1e-12)
    result = sap.compute_sap_from_codes(codes, factors, continuous_factors=True)
    assert result == {"SAP_score": pytest.approx(0.2, abs=1e-12)}
    metric = sap.SAP(sap.SAPConfig(continuous_factors=True))
    assert metric.score_codes(codes, factors)["SAP_score"] == pytest.approx(0.2, abs=1e-12)


def test_sap_top_two_gap():
    assert sap.top_two_gap(np.array([[0.9, 0.1], [0.2, 0.5], [0.3, 0.4]])) == pytest.approx((0.6 + 0.1) / 2)
    with pytest.raises(ValueError, match="at least 2 code dimensions"):
        sap.top_two_gap(np.ones((1, 3)))


def test_sap_discrete_properties(splits):
    factors, factors_test = splits
    noise = np.random.RandomState(3)
    perfect = sap.compute_sap_from_codes(perfect_codes(factors), factors, perfect_codes(factors_test), factors_test)
    rotated = sap.compute_sap_from_codes(rotated_codes(factors), factors, rotated_codes(factors_test), factors_test)
    pure_noise = sap.compute_sap_from_codes(noise.randn(600, 3), factors, noise.randn(300, 3), factors_test)
    # One linear SVM on one code cannot isolate the middle values of a factor, so
    # even a perfect code stays well below 1; the gap to the other codes is what counts.
    matrix = sap.sap_score_matrix(perfect_codes(factors), factors, perfect_codes(factors_test), factors_test)
    np.testing.assert_array_equal(np.argmax(matrix, axis=0), [1, 2, 0])  # the permutation of perfect_codes
    assert perfect["SAP_score"] > 0.25
    assert rotated["SAP_score"] < perfect["SAP_score"] - 0.1
    assert abs(pure_noise["SAP_score"]) < 0.05


def test_sap_discrete_uses_the_studys_svm(splits, monkeypatch):
    """The study's classifier: LinearSVC(C=0.01, class_weight="balanced"), sklearn's defaults otherwise."""
    import sklearn.svm

    made = []
    real = sklearn.svm.LinearSVC

    def recording(**kwargs):
        made.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(sklearn.svm, "LinearSVC", recording)
    factors, factors_test = splits
    sap.sap_score_matrix(perfect_codes(factors), factors, perfect_codes(factors_test), factors_test)
    assert len(made) == 3 * factors.shape[1]  # one classifier per (code dimension, factor)
    assert all(kwargs == {"C": 0.01, "class_weight": "balanced"} for kwargs in made)


def test_sap_discrete_needs_a_test_split(splits):
    factors, _ = splits
    with pytest.raises(ValueError, match="test split"):
        sap.compute_sap_from_codes(perfect_codes(factors), factors)


# -- modularity / explicitness ----------------------------------------------------------------------


def test_modularity_hand_computed():
    # Row 0 informs factor 0 only: 1. Row 1 splits evenly: delta = 0.25 / (0.25 * 1) = 1, so 0.
    # Row 2 carries no information: 0 by definition.
    assert modexp.modularity(np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])) == pytest.approx(1.0 / 3.0)
    # Three factors: row (2, 1, 0) has delta = (4 + 1 - 4) / (4 * 2) = 1/8.
    assert modexp.modularity(np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])) == pytest.approx((7.0 / 8.0 + 1.0) / 2.0)


def test_modularity_explicitness_properties(splits):
    factors, factors_test = splits
    noise = np.random.RandomState(4)
    perfect = modexp.compute_modularity_explicitness_from_codes(
        perfect_codes(factors), factors, perfect_codes(factors_test), factors_test
    )
    rotated = modexp.compute_modularity_explicitness_from_codes(
        rotated_codes(factors), factors, rotated_codes(factors_test), factors_test
    )
    pure_noise = modexp.compute_modularity_explicitness_from_codes(
        noise.randn(600, 3), factors, noise.randn(300, 3), factors_test
    )
    assert set(perfect) == {"modularity_score", "explicitness_score_train", "explicitness_score_test"}
    assert perfect["modularity_score"] > 0.95
    assert rotated["modularity_score"] < perfect["modularity_score"] - 0.2
    assert perfect["explicitness_score_test"] > 0.95
    assert abs(pure_noise["explicitness_score_test"] - 0.5) < 0.05


def test_explicitness_standardises_with_train_statistics():
    codes = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    standardized, mean, std = modexp.standardize(codes)
    np.testing.assert_allclose(mean, [2.0, 1.0])
    np.testing.assert_allclose(std, [math.sqrt(8.0 / 3.0), 1.0])  # ddof 0; a constant column keeps scale 1
    np.testing.assert_allclose(standardized[:, 1], 0.0)
    again, _, _ = modexp.standardize(codes + 1.0, mean, std)
    np.testing.assert_allclose(again, standardized + 1.0 / std)


def test_explicitness_survives_a_constant_code(splits):
    factors, factors_test = splits
    codes = np.column_stack([perfect_codes(factors), np.ones(len(factors))])
    codes_test = np.column_stack([perfect_codes(factors_test), np.ones(len(factors_test))])
    result = modexp.compute_modularity_explicitness_from_codes(codes, factors, codes_test, factors_test)
    assert np.isfinite(list(result.values())).all() and result["explicitness_score_test"] > 0.95


# -- unsupervised scores -------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "c"), [(1.0, 1.0, 0.5), (2.0, 0.5, -0.7), (3.0, 1.0, 0.0)])
def test_gaussian_correlations_closed_form(a, b, c):
    covariance = np.array([[a, c], [c, b]])
    # TC = 0.5 (log a + log b - log(ab - c^2)) = -0.5 log(1 - rho^2).
    expected_tc = -0.5 * math.log(1.0 - c * c / (a * b))
    assert unsupervised.gaussian_total_correlation(covariance) == pytest.approx(expected_tc, abs=1e-12)
    # diag(S) S has trace a^2 + b^2 and determinant ab(ab - c^2); for a 2x2 matrix with
    # eigenvalues l1, l2 >= 0, tr sqrt = sqrt(l1) + sqrt(l2) = sqrt(trace + 2 sqrt(det)).
    root_trace = math.sqrt(a * a + b * b + 2.0 * math.sqrt(a * b * (a * b - c * c)))
    expected_wc = 2.0 * (a + b) - 2.0 * root_trace
    assert unsupervised.gaussian_wasserstein_correlation(covariance) == pytest.approx(expected_wc, abs=1e-10)
    # ... which is W2^2(N(0, S), N(0, D)) = tr S + tr D - 2 tr (D^1/2 S D^1/2)^1/2.
    d_half = np.diag(np.sqrt([a, b]))
    eigenvalues = np.linalg.eigvalsh(d_half @ covariance @ d_half)
    assert expected_wc == pytest.approx(2.0 * (a + b) - 2.0 * np.sum(np.sqrt(np.clip(eigenvalues, 0, None))), abs=1e-10)


def test_mutual_info_score_hand_computed():
    # With 2 bins both columns discretise to (1, 1, 2, 2): MI = log 2 both ways.
    codes = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [3.0, 1.0]])
    assert unsupervised.mean_pairwise_mutual_info(codes, num_bins=2) == pytest.approx(math.log(2), abs=1e-12)
    # A third, constant column has MI 0 with both: 2 log 2 over 6 ordered pairs.
    codes = np.column_stack([codes, np.zeros(4)])
    assert unsupervised.mean_pairwise_mutual_info(codes, num_bins=2) == pytest.approx(math.log(2) / 3, abs=1e-12)


def test_unsupervised_scores_on_codes():
    random_state = np.random.RandomState(6)
    independent = random_state.randn(5000, 4) * np.array([1.0, 2.0, 0.5, 3.0])
    scores = unsupervised.compute_unsupervised_from_codes(independent)
    assert set(scores) == {
        "gaussian_total_correlation",
        "gaussian_wasserstein_correlation",
        "gaussian_wasserstein_correlation_norm",
        "mutual_info_score",
    }
    assert abs(scores["gaussian_total_correlation"]) < 0.01 and abs(scores["gaussian_wasserstein_correlation_norm"]) < 0.01
    correlated = independent @ np.linalg.qr(random_state.randn(4, 4))[0]
    mixed = unsupervised.compute_unsupervised_from_codes(correlated)
    covariance = np.cov(correlated.T)
    assert mixed["gaussian_total_correlation"] == pytest.approx(unsupervised.gaussian_total_correlation(covariance))
    assert mixed["gaussian_wasserstein_correlation_norm"] == pytest.approx(
        mixed["gaussian_wasserstein_correlation"] / np.trace(covariance)
    )
    for key in ("gaussian_total_correlation", "gaussian_wasserstein_correlation", "mutual_info_score"):
        assert mixed[key] > scores[key] + 0.05
    # Factors play no part.
    metric = unsupervised.Unsupervised()
    assert metric.score_codes(correlated, np.zeros((5000, 2))) == metric.score_codes(correlated, np.ones((5000, 7)))


# -- sampling wrappers, draw order, agreement with the array cores ------------------------------------

SMALL = {
    "dci": {"num_train": 150, "num_test": 100},
    "sap": {"num_train": 300, "num_test": 200},
    "modularity_explicitness": {"num_train": 300, "num_test": 200},
    "unsupervised": {"num_train": 300},
}


@pytest.mark.parametrize("name", list(SMALL))
def test_score_codes_agrees_with_score_representation(name, data, registry):
    params = SMALL[name]
    sampled = score_representation(name, data, rotated_code, seed=3, registry=registry, **params)
    random_state = np.random.RandomState(3)
    codes, factors = generate_batch_factor_code(data, rotated_code, params["num_train"], random_state, 16)
    codes_test = factors_test = None
    if "num_test" in params:
        codes_test, factors_test = generate_batch_factor_code(data, rotated_code, params["num_test"], random_state, 16)
    # DCI seeds its classifiers from the state handed to it, before any draw, so
    # sampling with seed 3 and scoring the same arrays with seed 3 agree exactly.
    on_arrays = score_codes(name, codes, factors, codes_test, factors_test, seed=3, registry=registry, **params)
    assert on_arrays == sampled
    assert set(sampled) >= set(registry.get("metric", name).factory(registry.get("metric", name).make_config(params)).headline)


@pytest.mark.parametrize(
    ("factory", "config"),
    [
        (dci.DCI, dci.DCIConfig(num_train=37, num_test=20)),
        (sap.SAP, sap.SAPConfig(num_train=37, num_test=20)),
        (modexp.ModularityExplicitness, modexp.ModularityExplicitnessConfig(num_train=37, num_test=20)),
        (unsupervised.Unsupervised, unsupervised.UnsupervisedConfig(num_train=37)),
    ],
)
def test_draw_order_and_random_state_use(factory, config, data):
    """Train split first, then test split, each in batches of batch_size; nothing else is drawn."""
    calls = []

    def recording_code(observations):
        calls.append(len(observations))
        return rotated_code(observations)

    random_state = np.random.RandomState(8)
    factory(config)(data, recording_code, random_state)
    expected_calls = [16, 16, 5] + ([16, 4] if hasattr(config, "num_test") else [])
    assert calls == expected_calls
    reference = np.random.RandomState(8)
    generate_batch_factor_code(data, rotated_code, 37, reference, 16)
    if hasattr(config, "num_test"):
        generate_batch_factor_code(data, rotated_code, 20, reference, 16)
    assert random_state.get_state()[2] == reference.get_state()[2]
    np.testing.assert_array_equal(random_state.get_state()[1], reference.get_state()[1])


def test_sap_continuous_skips_the_unused_test_split(data):
    calls = []

    def recording_code(observations):
        calls.append(len(observations))
        return perfect_code(observations)

    result = sap.SAP(sap.SAPConfig(num_train=200, num_test=50, continuous_factors=True))(
        data, recording_code, np.random.RandomState(0)
    )
    assert sum(calls) == 200 and result["SAP_score"] > 0.9


# DCI's reproducibility is covered by the agreement test above and the tied-splits test.
@pytest.mark.parametrize("name", ["sap", "modularity_explicitness", "unsupervised"])
def test_metrics_reproducible_from_seed(name, data, registry):
    first = score_representation(name, data, rotated_code, seed=5, registry=registry, **SMALL[name])
    assert score_representation(name, data, rotated_code, seed=5, registry=registry, **SMALL[name]) == first
    assert score_representation(name, data, rotated_code, seed=6, registry=registry, **SMALL[name]) != first


def test_metrics_reject_generator(data):
    with pytest.raises(TypeError, match="RandomState"):
        dci.DCI(dci.DCIConfig(num_train=20, num_test=20))(data, rotated_code, np.random.default_rng(0))


# -- configs and registration ----------------------------------------------------------------------------


def test_config_defaults_are_the_study_settings():
    assert dci.DCIConfig().model_dump() == {"num_train": 10000, "num_test": 5000, "batch_size": 16, "n_jobs": 1, "fast": False}
    assert sap.SAPConfig().model_dump() == {
        "num_train": 10000,
        "num_test": 5000,
        "batch_size": 16,
        "continuous_factors": False,
    }
    assert modexp.ModularityExplicitnessConfig().model_dump() == {
        "num_train": 10000,
        "num_test": 5000,
        "batch_size": 16,
        "num_bins": 20,
    }
    assert unsupervised.UnsupervisedConfig().model_dump() == {"num_train": 10000, "batch_size": 16, "num_bins": 20}
    for config in (dci.DCIConfig, sap.SAPConfig, modexp.ModularityExplicitnessConfig, unsupervised.UnsupervisedConfig):
        with pytest.raises(ValidationError):
            config(num_trian=10)
        with pytest.raises(ValidationError):
            config(batch_size=0)
        assert all(field.description for field in config.model_fields.values())
    with pytest.raises(ValidationError):
        dci.DCIConfig(n_jobs=0)


@pytest.mark.parametrize(
    ("module", "name", "config", "factory"),
    [
        (dci, "dci", dci.DCIConfig, dci.DCI),
        (sap, "sap", sap.SAPConfig, sap.SAP),
        (modexp, "modularity_explicitness", modexp.ModularityExplicitnessConfig, modexp.ModularityExplicitness),
        (unsupervised, "unsupervised", unsupervised.UnsupervisedConfig, unsupervised.Unsupervised),
    ],
)
def test_registers_itself(module, name, config, factory, registry):
    registered = [r for r in registry.all("metric") if r.factory.__module__ == module.__name__]
    assert len(registered) == 1
    registration = registered[0]
    assert (registration.name, registration.config, registration.factory) == (name, config, factory)
    assert registration.description and registration.source == "disentbench"
    metric = registration.factory(registration.config())
    assert callable(metric) and hasattr(metric, "score_codes") and metric.headline
