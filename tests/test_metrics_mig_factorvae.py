"""MIG, FactorVAE score and their shared utilities, against hand-computed values and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.evaluation import sampling
from disentbench.plugins.metrics import factor_vae_score as fvae
from disentbench.plugins.metrics import mig


class TinyFactors(GroundTruthData):
    """3 factors (sizes 4, 5, 6); each 1x2x2 image stores the factor values in its first 3 pixels."""

    name = "tiny_factors"
    factor_names = ("a", "b", "c")
    factor_sizes = (4, 5, 6)
    pixel_scale = 1.0

    def __init__(self):
        all_factors = self.factors_of(np.arange(self.num_observations))
        images = np.zeros((self.num_observations, 1, 2, 2), dtype=np.uint8)
        images.reshape(self.num_observations, 4)[:, :3] = all_factors
        self._images = images

    @property
    def images(self) -> np.ndarray:
        return self._images


def factor_code(observations: np.ndarray) -> np.ndarray:
    """Each code dimension is one factor (read back from the pixels)."""
    return observations.reshape(len(observations), -1)[:, :3].astype(np.float64)


def with_constant_dim(observations: np.ndarray) -> np.ndarray:
    codes = factor_code(observations)
    return np.column_stack([codes[:, 0], np.full(len(codes), 3.0), codes[:, 1:]])


# Orthogonal, and every factor loads on every code dimension; factors 0 and 1
# both load most on dimension 1, so no majority-vote classifier can get them both.
MIXING_ROTATION = np.column_stack(
    [np.ones(3) / math.sqrt(3), np.array([1.0, -1.0, 0.0]) / math.sqrt(2), np.array([1.0, 1.0, -2.0]) / math.sqrt(6)]
)


def rotated_code(observations: np.ndarray) -> np.ndarray:
    codes = factor_code(observations)
    sizes = np.array(TinyFactors.factor_sizes, dtype=np.float64)
    standardized = (codes - (sizes - 1) / 2) / np.sqrt((sizes**2 - 1) / 12)
    return standardized @ MIXING_ROTATION


def constant_code(observations: np.ndarray) -> np.ndarray:
    return np.zeros((len(observations), 4))


SMALL_FVAE = fvae.FactorVAEScoreConfig(num_train=300, num_eval=200, num_variance_estimate=1000)


@pytest.fixture(scope="module")
def data():
    return TinyFactors()


# -- sampling --------------------------------------------------------------------


def test_tiny_dataset_encodes_factors(data):
    factors, observations = data.sample(50, np.random.RandomState(0))
    assert observations.dtype == np.float32 and observations.shape == (50, 1, 2, 2)
    np.testing.assert_array_equal(factor_code(observations), factors)


def test_histogram_discretize_hand_computed():
    codes = np.array([[0.0, 0.0], [1.0, 0.1], [2.0, 0.9], [3.0, 1.0], [4.0, 0.5]])
    # Column 0, 4 bins: edges 0,1,2,3,4 -> labels by the left edges 0,1,2,3; the max joins the last bin.
    np.testing.assert_array_equal(sampling.histogram_discretize(codes[:, :1], num_bins=4)[:, 0], [1, 2, 3, 4, 4])
    # Both columns at 2 bins: each column uses its own range (column 1 edges 0, 0.5, 1).
    np.testing.assert_array_equal(
        sampling.histogram_discretize(codes, num_bins=2), [[1, 1], [1, 1], [2, 2], [2, 2], [2, 2]]
    )


def test_histogram_discretize_default_bins_span_1_to_20():
    codes = np.linspace(-3, 5, 400)[:, None]
    labels = sampling.histogram_discretize(codes)
    assert labels.min() == 1 and labels.max() == 20 and len(np.unique(labels)) == 20


def test_discrete_entropy_uniform_and_constant():
    factors = np.column_stack([np.tile(np.arange(4), 25), np.zeros(100, dtype=int)])
    np.testing.assert_allclose(sampling.discrete_entropy(factors), [math.log(4), 0.0], atol=1e-12)


def test_discrete_mutual_info_shape_and_values():
    factors = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    codes = np.column_stack([factors[:, 0], [5, 5, 5, 5], [1, 2, 3, 4]])
    mutual_info = sampling.discrete_mutual_info(codes, factors)
    expected = np.array([[math.log(2), 0.0], [0.0, 0.0], [math.log(2), math.log(2)]])
    np.testing.assert_allclose(mutual_info, expected, atol=1e-12)


def test_generate_batch_factor_code_batches_and_rows(data):
    calls = []

    def recording_code(observations):
        calls.append(len(observations))
        return factor_code(observations)

    codes, factors = sampling.generate_batch_factor_code(data, recording_code, 37, np.random.RandomState(3), 16)
    assert calls == [16, 16, 5]
    assert codes.shape == (37, 3) and factors.shape == (37, 3)
    np.testing.assert_array_equal(codes, factors)
    # Same draws as sampling batch by batch directly from the dataset.
    random_state = np.random.RandomState(3)
    expected = np.concatenate([data.sample(n, random_state)[0] for n in (16, 16, 5)])
    np.testing.assert_array_equal(factors, expected)


def test_random_state_must_be_legacy(data):
    with pytest.raises(TypeError, match="RandomState"):
        mig.MIG(mig.MIGConfig(num_train=10))(data, factor_code, np.random.default_rng(0))


# -- MIG ---------------------------------------------------------------------------


def test_mig_hand_computed():
    factors = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    codes = np.column_stack(
        [
            factors[:, 0],  # copies factor 0
            [0.0, 1.0, 2.0, 3.0],  # identifies every sample: I = H for both factors
            [0.0, 0.0, 0.0, 1.0],  # partial information about both factors
        ]
    )
    # I(c2; y) = H(c2) - H(c2 | y) = [1/4 log 4 + 3/4 log 4/3] - 1/2 log 2 = 3/4 log 4/3 for either factor.
    partial = 0.75 * math.log(4 / 3)
    expected_mi = np.array([[math.log(2), 0.0], [math.log(2), math.log(2)], [partial, partial]])
    np.testing.assert_allclose(
        sampling.discrete_mutual_info(sampling.histogram_discretize(codes), factors), expected_mi, atol=1e-12
    )
    # Factor 0: top two are log 2 and log 2 (gap 0); factor 1: log 2 and the partial term.
    expected_gaps = np.array([0.0, (math.log(2) - partial) / math.log(2)])
    np.testing.assert_allclose(mig.mig_per_factor(codes, factors), expected_gaps, atol=1e-12)
    assert mig.compute_mig_from_codes(codes, factors)["discrete_mig"] == pytest.approx(expected_gaps.mean(), abs=1e-12)


def _uniform_factors(num, random_state, sizes=(4, 5, 6)):
    return np.column_stack([random_state.randint(size, size=num) for size in sizes])


def test_mig_perfect_code_is_one():
    random_state = np.random.RandomState(0)
    factors = _uniform_factors(5000, random_state)
    codes = np.exp(factors / 3.0) + 1e-4 * random_state.randn(*factors.shape)  # monotone map per factor
    assert mig.compute_mig_from_codes(codes, factors)["discrete_mig"] > 0.95


def test_mig_random_code_is_zero():
    random_state = np.random.RandomState(1)
    factors = _uniform_factors(5000, random_state)
    codes = random_state.randn(5000, 5)
    assert mig.compute_mig_from_codes(codes, factors)["discrete_mig"] < 0.05


def test_mig_duplicated_factor_has_no_gap():
    random_state = np.random.RandomState(2)
    factors = _uniform_factors(5000, random_state)
    codes = np.column_stack([factors[:, 0], 2.0 * factors[:, 0], factors[:, 1], factors[:, 2]]).astype(float)
    gaps = mig.mig_per_factor(codes, factors)
    assert gaps[0] == pytest.approx(0.0, abs=1e-12)
    assert gaps[1] > 0.95 and gaps[2] > 0.95
    assert mig.compute_mig_from_codes(codes, factors)["discrete_mig"] == pytest.approx(gaps.mean())


def test_mig_rejects_single_code_dimension():
    factors = _uniform_factors(100, np.random.RandomState(0))
    with pytest.raises(ValueError, match="at least 2 code dimensions"):
        mig.compute_mig_from_codes(factors[:, :1].astype(float), factors)


def test_mig_metric_on_dataset(data):
    metric = mig.MIG(mig.MIGConfig(num_train=2000))
    result = metric(data, factor_code, np.random.RandomState(0))
    assert set(result) == {"discrete_mig"} and result["discrete_mig"] > 0.95
    again = metric(data, factor_code, np.random.RandomState(0))
    assert again == result


def test_mig_config_validation():
    assert mig.MIGConfig().model_dump() == {"num_train": 10000, "batch_size": 16, "num_bins": 20}
    with pytest.raises(ValidationError):
        mig.MIGConfig(num_bins=0)
    with pytest.raises(ValidationError):
        mig.MIGConfig(bins=20)


# -- FactorVAE score -----------------------------------------------------------------


def test_factor_vae_config_defaults_and_validation():
    assert fvae.FactorVAEScoreConfig().model_dump() == {
        "batch_size": 64,
        "num_train": 10000,
        "num_eval": 5000,
        "num_variance_estimate": 10000,
        "prune_threshold": 0.05,
    }
    with pytest.raises(ValidationError):
        fvae.FactorVAEScoreConfig(batch_size=1)
    with pytest.raises(ValidationError):
        fvae.FactorVAEScoreConfig(num_votes=10)


def test_factor_vae_perfect_code(data):
    result = fvae.FactorVAEScore(SMALL_FVAE)(data, factor_code, np.random.RandomState(0))
    assert result == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": 3}


def test_factor_vae_constant_dim_is_pruned_but_counted(data):
    result = fvae.FactorVAEScore(SMALL_FVAE)(data, with_constant_dim, np.random.RandomState(0))
    assert result["train_accuracy"] == 1.0 and result["eval_accuracy"] == 1.0
    # The reference's quirk: all 4 dimensions are reported, though only 3 are active.
    assert result["num_active_dims"] == 4


def test_factor_vae_rotated_code_scores_lower(data):
    result = fvae.FactorVAEScore(SMALL_FVAE)(data, rotated_code, np.random.RandomState(0))
    assert result["num_active_dims"] == 3
    assert result["eval_accuracy"] < 0.85


def test_factor_vae_constant_code_scores_zero(data):
    result = fvae.FactorVAEScore(SMALL_FVAE)(data, constant_code, np.random.RandomState(0))
    assert result == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_factor_vae_votes_use_active_indexing(data):
    random_state = np.random.RandomState(0)
    variances = fvae.compute_global_variances(data, with_constant_dim, 500, random_state)
    active = fvae.active_dimensions(variances)
    np.testing.assert_array_equal(active, [True, False, True, True])
    votes = fvae.generate_votes(data, with_constant_dim, 64, 90, random_state, variances, active)
    assert votes.shape == (3, 4) and votes.sum() == 90
    # Column = position among the active dimensions: factor f votes for column f; the last column stays empty.
    np.testing.assert_array_equal(votes[:, :3], np.diag(np.diag(votes[:, :3])))
    assert votes[:, 3].sum() == 0


def test_factor_vae_draw_order(data):
    """Variance observations are all drawn before encoding in chunks; then one encoding per vote."""
    calls = []

    class Recording(TinyFactors):
        def sample_observations(self, num, random_state):
            calls.append(("sample_observations", num))
            return super().sample_observations(num, random_state)

        def sample_factors(self, num, random_state):
            calls.append(("sample_factors", num))
            return super().sample_factors(num, random_state)

    def recording_code(observations):
        calls.append(("encode", len(observations)))
        return factor_code(observations)

    config = fvae.FactorVAEScoreConfig(num_train=2, num_eval=1, num_variance_estimate=150)
    fvae.FactorVAEScore(config)(Recording(), recording_code, np.random.RandomState(0))
    assert calls == [
        ("sample_observations", 150),
        ("sample_factors", 150),
        ("encode", 64),
        ("encode", 64),
        ("encode", 22),
    ] + [("sample_factors", 64), ("encode", 64)] * 3


def test_factor_vae_global_variance_is_unbiased(data):
    """Two codes 0 and 2: the sample variance (ddof=1) is 2, where ddof=0 would give 1."""
    fixed = np.array([[0.0, 5.0], [2.0, 5.0]])
    variances = fvae.compute_global_variances(data, lambda obs: fixed[: len(obs)], 2, np.random.RandomState(0))
    np.testing.assert_allclose(variances, [2.0, 0.0])


def test_factor_vae_prunes_on_the_standard_deviation():
    """Variance 0.01 is a standard deviation of 0.1: active, though the variance is below 0.05."""
    active = fvae.active_dimensions(np.array([0.01, 0.0024, 0.0025, 4.0]), threshold=0.05)
    np.testing.assert_array_equal(active, [True, False, True, True])


def scaled_leaky_code(observations: np.ndarray) -> np.ndarray:
    """Dimension 0 is 10 x factor a plus factor c; dimension 1 is 0.1 x factor b; dimension 2 is factor c.

    With factor a fixed, dimension 0 keeps factor c's variance (~2.9), which is more than dimension 1's whole
    variance (~0.02): only the local variance *relative to the global one* picks dimension 0 for factor a.
    """
    a, b, c = factor_code(observations).T
    return np.column_stack([10 * a + c, 0.1 * b, c])


def test_factor_vae_votes_on_variance_relative_to_the_global_one(data):
    result = fvae.FactorVAEScore(SMALL_FVAE)(data, scaled_leaky_code, np.random.RandomState(0))
    assert result["train_accuracy"] == 1.0 and result["eval_accuracy"] == 1.0


def test_factor_vae_reproducible_from_seed(data):
    def votes(seed):
        random_state = np.random.RandomState(seed)
        variances = fvae.compute_global_variances(data, rotated_code, 500, random_state)
        active = fvae.active_dimensions(variances)
        return fvae.generate_votes(data, rotated_code, 64, 100, random_state, variances, active)

    np.testing.assert_array_equal(votes(7), votes(7))
    assert not np.array_equal(votes(7), votes(8))
    metric = fvae.FactorVAEScore(SMALL_FVAE)
    assert metric(data, rotated_code, np.random.RandomState(5)) == metric(data, rotated_code, np.random.RandomState(5))


# -- registration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "config", "factory"),
    [(mig, "mig", mig.MIGConfig, mig.MIG), (fvae, "factor_vae_score", fvae.FactorVAEScoreConfig, fvae.FactorVAEScore)],
)
def test_registers_itself(module, name, config, factory, registry):
    registered = [r for r in registry.all("metric") if r.factory.__module__ == module.__name__]
    assert len(registered) == 1
    registration = registered[0]
    assert (registration.name, registration.config, registration.factory) == (name, config, factory)
    assert registration.description and registration.source == "disentbench"
    assert callable(registration.factory(registration.config()))
