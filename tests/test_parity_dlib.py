"""Optional parity with disentanglement_lib (the study's code) for DCI, SAP,
modularity/explicitness and the unsupervised scores.

Skipped unless ``disentanglement_lib`` imports. It needs no TensorFlow: set up
a separate environment (never the shared one), e.g.::

    python -m venv --system-site-packages /tmp/dlibenv
    /tmp/dlibenv/bin/pip install --no-deps disentanglement-lib==1.5 gin-config==0.4.0 absl-py six
    /tmp/dlibenv/bin/python -m pytest tests/test_parity_dlib.py

``gin.tf`` (imported by the metric modules) is replaced by an empty module when
TensorFlow is missing. The reference holds arrays transposed: ``(d, n)``.

DCI: the reference's gradient-boosted trees draw their splitter seeds from
numpy's global random state; disentbench draws them from
``RandomState(dci.classifier_seed(random_state))`` in the same order, so the
reference is run right after ``np.random.seed(dci.classifier_seed(...))``.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.plugins.metrics import dci, sap, unsupervised
from disentbench.plugins.metrics import modularity_explicitness as modexp

pytest.importorskip("disentanglement_lib")
gin = pytest.importorskip("gin")
try:
    importlib.import_module("gin.tf")
except Exception:  # gin.tf needs TensorFlow; the metrics only use it for its side effects
    sys.modules["gin.tf"] = types.ModuleType("gin.tf")

from disentanglement_lib.evaluation.metrics import dci as dlib_dci  # noqa: E402
from disentanglement_lib.evaluation.metrics import modularity_explicitness as dlib_modexp  # noqa: E402
from disentanglement_lib.evaluation.metrics import sap_score as dlib_sap  # noqa: E402
from disentanglement_lib.evaluation.metrics import unsupervised_metrics as dlib_unsup  # noqa: E402
from disentanglement_lib.evaluation.metrics import utils as dlib_utils  # noqa: E402

FACTOR_SIZES = (3, 4, 2)


def random_split(seed: int, num: int, num_codes: int = 5):
    """Continuous codes that depend on the factors (so the scores are not trivial)."""
    random_state = np.random.RandomState(seed)
    factors = np.column_stack([random_state.randint(size, size=num) for size in FACTOR_SIZES])
    loadings = random_state.randn(len(FACTOR_SIZES), num_codes)
    codes = np.tanh(factors @ loadings / 3.0) + 0.3 * random_state.randn(num, num_codes)
    return codes, factors


@pytest.fixture(scope="module")
def split():
    codes, factors = random_split(0, 400)
    codes_test, factors_test = random_split(1, 200)
    return codes, factors, codes_test, factors_test


@pytest.fixture
def discretizer_bindings():
    gin.clear_config()
    gin.parse_config(["discretizer.discretizer_fn = @histogram_discretizer", "discretizer.num_bins = 20"])
    yield
    gin.clear_config()


def test_dci_core_parity(split):
    codes, factors, codes_test, factors_test = split
    np.random.seed(dci.classifier_seed(np.random.RandomState(0)))
    reference = dlib_dci._compute_dci(codes.T, factors.T, codes_test.T, factors_test.T)
    ours = dci.compute_dci_from_codes(codes, factors, codes_test, factors_test, np.random.RandomState(0))
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key] == value, key


def test_dci_disentanglement_completeness_parity():
    random_state = np.random.RandomState(2)
    for importance in (random_state.rand(6, 3), np.vstack([random_state.rand(3, 4), np.zeros((2, 4))]), np.zeros((4, 3))):
        assert dci.disentanglement(importance) == dlib_dci.disentanglement(importance)
        assert dci.completeness(importance) == dlib_dci.completeness(importance)


@pytest.mark.parametrize("continuous_factors", [False, True])
def test_sap_core_parity(split, continuous_factors):
    codes, factors, codes_test, factors_test = split
    reference = dlib_sap._compute_sap(codes.T, factors.T, codes_test.T, factors_test.T, continuous_factors)
    ours = sap.compute_sap_from_codes(codes, factors, codes_test, factors_test, continuous_factors)
    assert ours == {"SAP_score": reference["SAP_score"]}
    np.testing.assert_allclose(
        sap.sap_score_matrix(codes, factors, codes_test, factors_test, continuous_factors),
        dlib_sap.compute_score_matrix(codes.T, factors.T, codes_test.T, factors_test.T, continuous_factors),
        rtol=0,
        atol=0,
    )


def test_modularity_parity():
    random_state = np.random.RandomState(3)
    mutual_information = random_state.rand(6, 4)
    mutual_information[2] = 0.0
    assert modexp.modularity(mutual_information) == dlib_modexp.modularity(mutual_information)


def test_explicitness_parity(split):
    codes, factors, codes_test, factors_test = split
    train, mean, std = dlib_utils.normalize_data(codes.T)
    test, _, _ = dlib_utils.normalize_data(codes_test.T, mean, std)
    ours_train, ours_mean, ours_std = modexp.standardize(codes)
    ours_test, _, _ = modexp.standardize(codes_test, ours_mean, ours_std)
    np.testing.assert_array_equal(ours_train, train.T)
    for j in range(factors.shape[1]):
        reference = dlib_modexp.explicitness_per_factor(train, factors[:, j], test, factors_test[:, j])
        ours = modexp.explicitness_per_factor(ours_train, factors[:, j], ours_test, factors_test[:, j])
        np.testing.assert_array_equal(ours, np.ravel(reference))


def test_gaussian_scores_parity():
    random_state = np.random.RandomState(4)
    mixing = random_state.randn(6, 6)
    covariance = np.cov((random_state.randn(500, 6) @ mixing).T)
    assert unsupervised.gaussian_total_correlation(covariance) == dlib_unsup.gaussian_total_correlation(covariance)
    assert unsupervised.gaussian_wasserstein_correlation(covariance) == float(
        np.real(dlib_unsup.gaussian_wasserstein_correlation(covariance))
    )


# -- end to end: the reference's sampling wrappers against ours, same RandomState seed ---------------------


class TinyFactors(GroundTruthData):
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
    def images(self):
        return self._images


_LOADINGS = np.random.RandomState(5).randn(3, 4)


def smooth_code(observations):
    """A deterministic, continuous-valued code of the factors stored in the pixels."""
    factors = observations.reshape(len(observations), -1)[:, :3].astype(np.float64)
    projected = factors @ _LOADINGS
    return np.tanh(projected / 3.0) + 0.05 * np.sin(7.0 * projected[:, ::-1])


def _assert_same(ours, reference):
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key] == float(np.real(value)), key


def test_dci_sampling_parity():
    data = TinyFactors()
    np.random.seed(dci.classifier_seed(np.random.RandomState(7)))  # the state before sampling
    reference = dlib_dci.compute_dci(data, smooth_code, np.random.RandomState(7), num_train=300, num_test=150, batch_size=16)
    ours = dci.DCI(dci.DCIConfig(num_train=300, num_test=150))(data, smooth_code, np.random.RandomState(7))
    _assert_same(ours, reference)


@pytest.mark.parametrize("continuous_factors", [False, True])
def test_sap_sampling_parity(continuous_factors):
    data = TinyFactors()
    reference = dlib_sap.compute_sap(
        data, smooth_code, np.random.RandomState(8), num_train=400, num_test=200, batch_size=16,
        continuous_factors=continuous_factors,
    )
    config = sap.SAPConfig(num_train=400, num_test=200, continuous_factors=continuous_factors)
    _assert_same(sap.SAP(config)(data, smooth_code, np.random.RandomState(8)), reference)


def test_modularity_explicitness_sampling_parity(discretizer_bindings):
    data = TinyFactors()
    reference = dlib_modexp.compute_modularity_explicitness(
        data, smooth_code, np.random.RandomState(9), num_train=500, num_test=250, batch_size=16
    )
    config = modexp.ModularityExplicitnessConfig(num_train=500, num_test=250)
    _assert_same(modexp.ModularityExplicitness(config)(data, smooth_code, np.random.RandomState(9)), reference)


def test_unsupervised_sampling_parity(discretizer_bindings):
    data = TinyFactors()
    reference = dlib_unsup.unsupervised_metrics(data, smooth_code, np.random.RandomState(10), num_train=500, batch_size=16)
    config = unsupervised.UnsupervisedConfig(num_train=500)
    _assert_same(unsupervised.Unsupervised(config)(data, smooth_code, np.random.RandomState(10)), reference)
