"""Nearest centroid: the downstream-task part of the example plugin.

How well can each factor be read off the codes by the simplest classifier
there is: one centroid per factor value, a test code gets the value of the
nearest centroid. Codes come through the dataset and the ``RandomState`` the
task is given, like the built-in tasks', so scores are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, PluginConfig, Task


class NearestCentroidConfig(PluginConfig):
    num_train: int = Field(1000, ge=2, description="Training points drawn from the dataset.")
    num_test: int = Field(500, ge=1, description="Test points drawn from the dataset.")


class NearestCentroid(Task):
    """Per-factor test accuracy of a nearest-centroid classifier on the codes: ``{"mean_accuracy", "factor_<i>"}``."""

    name = "nearest_centroid"
    description = "Downstream task (example plugin): per-factor accuracy of a nearest-centroid classifier on the codes"
    config_class = NearestCentroidConfig
    headline = ("mean_accuracy",)

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: Callable[[np.ndarray], np.ndarray],
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        train_factors, train_observations = data.sample(self.config.num_train, random_state)
        test_factors, test_observations = data.sample(self.config.num_test, random_state)
        train_codes = np.asarray(representation_function(train_observations), dtype=np.float64)
        test_codes = np.asarray(representation_function(test_observations), dtype=np.float64)
        scores: dict[str, float] = {}
        for factor in range(train_factors.shape[1]):
            values = np.unique(train_factors[:, factor])
            centroids = np.stack([train_codes[train_factors[:, factor] == v].mean(axis=0) for v in values])
            distances = ((test_codes[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
            predicted = values[distances.argmin(axis=1)]
            scores[f"factor_{factor}"] = float((predicted == test_factors[:, factor]).mean())
        scores["mean_accuracy"] = float(np.mean(list(scores.values())))
        return scores
