"""Code spread: the metric part of the example plugin.

Not a disentanglement score, just the simplest useful diagnostic: the standard
deviation of each code dimension over observations drawn from the dataset. A
dimension whose spread is near zero is unused (a collapsed latent), which is
how a VAE with a large KL weight switches latents off.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from disentbench import GroundTruthData, Metric, PluginConfig


class CodeStdConfig(PluginConfig):
    num_points: int = Field(1000, ge=2, description="Observations drawn from the dataset and encoded.")


class CodeStd(Metric):
    """``CodeStd(config)(data, representation_function, random_state) -> {"mean_std", "min_std"}``."""

    name = "code_std"
    description = "Per-dimension standard deviation of the codes (example plugin): mean and min over dimensions"
    config_class = CodeStdConfig

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: Callable[[np.ndarray], np.ndarray],
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        # Drawing through the dataset with the caller's RandomState keeps the
        # score reproducible and on the same draws as the other metrics.
        observations = data.sample_observations(self.config.num_points, random_state)
        codes = np.asarray(representation_function(observations))
        if codes.ndim != 2 or codes.shape[0] != len(observations):
            raise ValueError(
                f"representation_function must return codes of shape ({len(observations)}, d), got {codes.shape}"
            )
        spread = codes.std(axis=0)
        return {"mean_std": float(spread.mean()), "min_std": float(spread.min())}
