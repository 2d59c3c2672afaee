"""BetaVAE score and the downstream tasks: known properties, draw order, and equality with plain reimplementations."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.evaluation import sampling
from disentbench.plugins.metrics import beta_vae_score as bvae
from disentbench.plugins.tasks import downstream


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


class NoisyTinyFactors(TinyFactors):
    """Rendering draws from the random state too, so any change in draw order changes the observations."""

    def to_float(self, images, random_state):
        observations = super().to_float(images, random_state)
        return observations + random_state.uniform(0, 0.1, size=observations.shape).astype(np.float32)


class NumpyOnlyDataset:
    """Only the three members score_representation requires; no torch, no GroundTruthData."""

    factor_sizes = (3, 4)

    def sample_factors(self, num, random_state):
        return np.column_stack([random_state.randint(size, size=num) for size in self.factor_sizes])

    def sample_observations_from_factors(self, factors, random_state):
        return np.asarray(factors, dtype=np.float64)


def factor_code(observations: np.ndarray) -> np.ndarray:
    return observations.reshape(len(observations), -1)[:, :3].astype(np.float64)


MIXING = np.random.RandomState(42).randn(4, 5)


def mixed_code(observations: np.ndarray) -> np.ndarray:
    """A deterministic, entangled float32 code of every pixel (noise included)."""
    return np.tanh(observations.reshape(len(observations), -1) @ MIXING / 3).astype(np.float32)


def one_hot_code(observations: np.ndarray) -> np.ndarray:
    factors = factor_code(observations).astype(int)
    return np.concatenate([np.eye(size)[factors[:, j]] for j, size in enumerate(TinyFactors.factor_sizes)], axis=1)


def noise_code_from(seed: int):
    generator = np.random.default_rng(seed)
    return lambda observations: generator.standard_normal((len(observations), 4))


@pytest.fixture(scope="module")
def data():
    return TinyFactors()


@pytest.fixture(scope="module")
def noisy_data():
    return NoisyTinyFactors()


# -- BetaVAE score -------------------------------------------------------------------


def naive_training_batch(data, representation_function, batch_size, num_points, random_state):
    """One point at a time, two representation calls per point: the study's procedure, spelled out."""
    labels = np.zeros(num_points, dtype=np.int64)
    features = None
    for i in range(num_points):
        k = random_state.randint(data.num_factors)
        factors1 = data.sample_factors(batch_size, random_state)
        factors2 = data.sample_factors(batch_size, random_state)
        factors2[:, k] = factors1[:, k]
        observations1 = data.sample_observations_from_factors(factors1, random_state)
        observations2 = data.sample_observations_from_factors(factors2, random_state)
        feature = np.mean(np.abs(representation_function(observations1) - representation_function(observations2)), axis=0)
        if features is None:
            features = np.zeros((num_points, len(feature)))
        labels[i], features[i] = k, feature
    return features, labels


def naive_beta_vae_score(data, representation_function, random_state, batch_size, num_train, num_eval):
    from sklearn.linear_model import LogisticRegression

    train_features, train_labels = naive_training_batch(data, representation_function, batch_size, num_train, random_state)
    model = LogisticRegression(random_state=random_state).fit(train_features, train_labels)
    eval_features, eval_labels = naive_training_batch(data, representation_function, batch_size, num_eval, random_state)
    return {
        "train_accuracy": float(np.mean(model.predict(train_features) == train_labels)),
        "eval_accuracy": float(model.score(eval_features, eval_labels)),
    }


SMALL_BVAE = bvae.BetaVAEScoreConfig(num_train=300, num_eval=200)


def test_beta_vae_config_defaults_and_validation():
    assert bvae.BetaVAEScoreConfig().model_dump() == {
        "batch_size": 64,
        "num_train": 10000,
        "num_eval": 5000,
        "encoding_batch_size": 4096,
    }
    with pytest.raises(ValidationError):
        bvae.BetaVAEScoreConfig(num_train=0)
    with pytest.raises(ValidationError):
        bvae.BetaVAEScoreConfig(num_points=10)


@pytest.mark.parametrize("encoding_batch_size", [1, 64, 200, 4096])
def test_batched_features_equal_one_point_at_a_time(noisy_data, encoding_batch_size):
    expected = naive_training_batch(noisy_data, mixed_code, 16, 37, np.random.RandomState(3))
    features, labels = bvae.generate_training_batch(
        noisy_data, mixed_code, 16, 37, np.random.RandomState(3), encoding_batch_size
    )
    np.testing.assert_array_equal(labels, expected[1])
    np.testing.assert_array_equal(features, expected[0])
    assert features.dtype == np.float64


def test_batched_score_equals_one_point_at_a_time(noisy_data):
    config = bvae.BetaVAEScoreConfig(batch_size=32, num_train=120, num_eval=80, encoding_batch_size=1000)
    result = bvae.BetaVAEScore(config)(noisy_data, mixed_code, np.random.RandomState(11))
    expected = naive_beta_vae_score(noisy_data, mixed_code, np.random.RandomState(11), 32, 120, 80)
    assert result == expected


def test_beta_vae_encodes_many_points_per_call(data):
    calls = []

    def recording_code(observations):
        calls.append(len(observations))
        return factor_code(observations)

    # 1000 // (2 * 64) = 7 points (896 observations) per call; 300 + 200 points.
    bvae.BetaVAEScore(bvae.BetaVAEScoreConfig(num_train=300, num_eval=200, encoding_batch_size=1000))(
        data, recording_code, np.random.RandomState(0)
    )
    assert calls == [896] * 42 + [6 * 128] + [896] * 28 + [4 * 128]


def test_beta_vae_perfect_code(data):
    result = bvae.BetaVAEScore(SMALL_BVAE)(data, factor_code, np.random.RandomState(0))
    assert set(result) == {"train_accuracy", "eval_accuracy"}
    assert result["train_accuracy"] > 0.98 and result["eval_accuracy"] > 0.98


def test_beta_vae_noise_code_is_near_chance(data):
    config = bvae.BetaVAEScoreConfig(num_train=300, num_eval=600)
    result = bvae.BetaVAEScore(config)(data, noise_code_from(0), np.random.RandomState(0))
    assert abs(result["eval_accuracy"] - 1 / 3) < 0.08


def test_beta_vae_reproducible_from_seed(data):
    metric = bvae.BetaVAEScore(bvae.BetaVAEScoreConfig(num_train=100, num_eval=50))
    assert metric(data, mixed_code, np.random.RandomState(5)) == metric(data, mixed_code, np.random.RandomState(5))
    features = [bvae.generate_training_batch(data, mixed_code, 64, 20, np.random.RandomState(s))[0] for s in (5, 5, 6)]
    np.testing.assert_array_equal(features[0], features[1])
    assert not np.array_equal(features[0], features[2])


def test_beta_vae_needs_legacy_random_state(data):
    with pytest.raises(TypeError, match="RandomState"):
        bvae.BetaVAEScore(SMALL_BVAE)(data, factor_code, np.random.default_rng(0))


# -- downstream tasks -------------------------------------------------------------------


class NearestCentroidTask(downstream.DownstreamTask):
    """A cheap predictor, so that the 10000-point size fits in a unit test."""

    @staticmethod
    def make_predictor(seed):
        from sklearn.neighbors import NearestCentroid

        return NearestCentroid()


def expected_keys(sizes, num_factors=3):
    keys = set()
    for n in sizes:
        keys |= {f"{n}:{s}_accuracy" for s in ("mean_train", "mean_test", "min_train", "min_test")}
        keys |= {f"{n}:{split}_accuracy_factor_{i}" for split in ("train", "test") for i in range(num_factors)}
    return keys


SMALL_TASK = downstream.DownstreamConfig(num_train=[10, 100], num_test=300)


def test_downstream_config_defaults_and_validation():
    assert downstream.DownstreamConfig().model_dump() == {
        "num_train": [10, 100, 1000, 10000],
        "num_test": 5000,
        "batch_size": 16,
        "n_jobs": -1,
    }
    for bad in ({"num_train": [10, 10]}, {"num_train": []}, {"num_train": [0]}, {"n_jobs": 0}, {"predictor": "svm"}):
        with pytest.raises(ValidationError):
            downstream.DownstreamConfig(**bad)


def test_logistic_regression_keys_and_perfect_code(data):
    task = downstream.LogisticRegressionTask(SMALL_TASK)
    scores = task(data, one_hot_code, np.random.RandomState(0))
    assert set(scores) == expected_keys([10, 100])
    assert task.headline == ("100:mean_test_accuracy",)
    assert scores["100:mean_test_accuracy"] > 0.97 and scores["100:min_test_accuracy"] > 0.9
    tests = [scores[f"100:test_accuracy_factor_{i}"] for i in range(3)]
    assert scores["100:mean_test_accuracy"] == pytest.approx(np.mean(tests))
    assert scores["100:min_test_accuracy"] == min(tests)


def test_gradient_boosting_perfect_and_noise_codes(data):
    task = downstream.GradientBoostingTask(downstream.DownstreamConfig(num_train=[100], num_test=300))
    perfect = task(data, factor_code, np.random.RandomState(0))
    assert set(perfect) == expected_keys([100])
    assert perfect["100:mean_test_accuracy"] > 0.97
    noise = task(data, noise_code_from(1), np.random.RandomState(0))
    chance = np.mean([1 / size for size in data.factor_sizes])
    assert noise["100:mean_train_accuracy"] > 0.9  # it memorises the noise...
    assert abs(noise["100:mean_test_accuracy"] - chance) < 0.08  # ...and learns nothing


def test_logistic_regression_noise_code_is_near_chance(data):
    task = downstream.LogisticRegressionTask(downstream.DownstreamConfig(num_train=[100], num_test=500))
    scores = task(data, noise_code_from(2), np.random.RandomState(0))
    assert scores["100:mean_test_accuracy"] < 0.32


def naive_logistic_regression_task(data, representation_function, random_state, sizes, num_test):
    """The study's procedure with its predictor as written there (scikit-learn's defaults, sequential fits).

    BLAS is limited to one thread only to keep the test fast on a busy machine
    (spinning BLAS threads slow these tiny fits down many times); the task's
    results were checked equal to unlimited BLAS threads as well.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    scores = {}
    for n in sizes:
        codes, factors = sampling.generate_batch_factor_code(data, representation_function, n, random_state, 16)
        codes_test, factors_test = sampling.generate_batch_factor_code(
            data, representation_function, num_test, random_state, 16
        )
        for i in range(factors.shape[1]):
            with threadpool_limits(limits=1):
                model = LogisticRegressionCV(Cs=10, cv=KFold(n_splits=5)).fit(codes, factors[:, i])
            scores[f"{n}:train_accuracy_factor_{i}"] = np.mean(model.predict(codes) == factors[:, i])
            scores[f"{n}:test_accuracy_factor_{i}"] = np.mean(model.predict(codes_test) == factors_test[:, i])
    return scores


def test_logistic_regression_equals_plain_reimplementation(noisy_data):
    config = downstream.DownstreamConfig(num_train=[10, 60], num_test=100, n_jobs=2)
    scores = downstream.LogisticRegressionTask(config)(noisy_data, mixed_code, np.random.RandomState(4))
    expected = naive_logistic_regression_task(noisy_data, mixed_code, np.random.RandomState(4), [10, 60], 100)
    for key, value in expected.items():
        assert scores[key] == value, key


def test_draws_train_then_test_per_size(data):
    calls = []

    class Recording(TinyFactors):
        def sample_factors(self, num, random_state):
            calls.append(num)
            return super().sample_factors(num, random_state)

    config = downstream.DownstreamConfig(num_train=[10, 20], num_test=40, batch_size=16)
    NearestCentroidTask(config)(Recording(), factor_code, np.random.RandomState(0))
    assert calls == [10, 16, 16, 8, 16, 4, 16, 16, 8]


def test_gradient_boosting_deterministic_and_independent_of_n_jobs(noisy_data):
    def run(n_jobs, seed=0):
        config = downstream.DownstreamConfig(num_train=[10, 30], num_test=60, n_jobs=n_jobs)
        return downstream.GradientBoostingTask(config)(noisy_data, mixed_code, np.random.RandomState(seed))

    sequential = run(1)
    assert run(2) == sequential
    assert run(1, seed=1) != sequential


def test_sample_efficiency_from_recorded_keys(data):
    task = NearestCentroidTask(downstream.DownstreamConfig(num_train=[100, 10000], num_test=200, batch_size=1000))
    assert task.headline == ("10000:mean_test_accuracy", "sample_efficiency")
    scores = task(data, mixed_code, np.random.RandomState(0))
    assert set(scores) == expected_keys([100, 10000]) | {"sample_efficiency"}
    assert scores["sample_efficiency"] == scores["100:mean_test_accuracy"] / scores["10000:mean_test_accuracy"]
    assert downstream.sample_efficiency({"100:mean_test_accuracy": 0.5}) is None
    assert downstream.sample_efficiency({"100:mean_test_accuracy": 0.4, "10000:mean_test_accuracy": 0.8}) == 0.5


def test_single_valued_factor_gets_a_constant_predictor():
    class OneValue(TinyFactors):
        factor_sizes = (1, 5, 6)

    scores = downstream.LogisticRegressionTask(downstream.DownstreamConfig(num_train=[10], num_test=50))(
        OneValue(), factor_code, np.random.RandomState(0)
    )
    assert scores["10:train_accuracy_factor_0"] == 1.0 and scores["10:test_accuracy_factor_0"] == 1.0


def test_score_representation_with_numpy_only_dataset(registry):
    from disentbench.core.evaluation.api import score_codes, score_representation

    scores = score_representation(
        "downstream_logistic_regression",
        NumpyOnlyDataset(),
        lambda observations: observations * 2.0,
        seed=0,
        registry=registry,
        num_train=[10, 100],
        num_test=200,
    )
    assert set(scores) == expected_keys([10, 100], num_factors=2)
    assert scores["100:mean_test_accuracy"] > 0.9
    random_state = np.random.RandomState(0)
    factors = NumpyOnlyDataset().sample_factors(400, random_state)
    array_scores = score_codes(
        "downstream_gradient_boosting", factors[:200] * 1.0, factors[:200], factors[200:] * 1.0, factors[200:],
        registry=registry,
    )
    assert set(array_scores) == expected_keys([200], num_factors=2) and array_scores["200:mean_test_accuracy"] == 1.0


def test_beta_vae_through_score_representation(registry):
    from disentbench.core.evaluation.api import score_representation

    scores = score_representation(
        "beta_vae_score", NumpyOnlyDataset(), lambda x: x * 1.0, registry=registry, num_train=100, num_eval=100
    )
    assert scores["eval_accuracy"] > 0.95


def test_registers_itself(registry):
    # registry.plugins keeps registration order (registry.all sorts by name)
    registered = [r for r in registry.plugins["metric"].values() if r.factory.__module__ == bvae.__name__]
    registered += [r for r in registry.plugins["task"].values() if r.factory.__module__ == downstream.__name__]
    assert [r.name for r in registered] == ["beta_vae_score", "downstream_logistic_regression", "downstream_gradient_boosting"]
    for registration in registered:
        assert registration.source == "disentbench"
        assert registration.description and callable(registration.factory(registration.config()))


def test_builtin_registry_has_them(registry):
    assert "beta_vae_score" in registry.names("metric")
    assert {"downstream_logistic_regression", "downstream_gradient_boosting"} <= set(registry.names("task"))
