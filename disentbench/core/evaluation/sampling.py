"""Shared machinery of the sampling metrics (study spec section 4, "Common machinery").

Engine code, so that every metric or task, built-in or third-party, can draw
and encode its points the same way without depending on another plugin.
Everything here follows the reference evaluation's conventions so that scores
match it for the same ``numpy.random.RandomState`` seed:

* the random state is a ``numpy.random.RandomState`` (the reference metrics
  take one; a ``numpy.random.Generator`` draws different numbers);
* a representation function maps float32 observations ``(n, C, H, W)`` to
  codes ``(n, d)``;
* codes and factors are returned with samples in rows, ``(n, d)`` and
  ``(n, k)`` (the reference library works with the transpose).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from disentbench.core.data.ground_truth import GroundTruthData

RepresentationFunction = Callable[[np.ndarray], np.ndarray]


def check_random_state(random_state) -> np.random.RandomState:
    """Reject anything but a legacy ``RandomState``: other generators draw different numbers."""
    if not isinstance(random_state, np.random.RandomState):
        raise TypeError(
            "metrics need a numpy.random.RandomState (e.g. np.random.RandomState(seed)) to reproduce "
            f"the study's draws, got {type(random_state).__name__}"
        )
    return random_state


def encode(representation_function: RepresentationFunction, observations: np.ndarray) -> np.ndarray:
    """Codes ``(n, d)`` of a batch of observations, checked for shape."""
    codes = np.asarray(representation_function(observations))
    if codes.ndim != 2 or codes.shape[0] != len(observations):
        raise ValueError(
            f"representation_function must return codes of shape (n, d) = ({len(observations)}, d), "
            f"got {codes.shape}"
        )
    return codes


def encode_in_batches(
    representation_function: RepresentationFunction, observations: np.ndarray, batch_size: int
) -> np.ndarray:
    """Encode already drawn observations in consecutive chunks of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [
        encode(representation_function, observations[start : start + batch_size])
        for start in range(0, len(observations), batch_size)
    ]
    return np.concatenate(chunks, axis=0)


def generate_batch_factor_code(
    data: GroundTruthData,
    representation_function: RepresentationFunction,
    num_points: int,
    random_state: np.random.RandomState,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_points`` (factors, observation) pairs and encode them.

    The draws come in batches of ``min(batch_size, remaining)``, each a call to
    ``data.sample`` followed by one call of the representation function: the
    reference's order, so the random state is consumed identically.

    Returns ``(codes (num_points, d), factors (num_points, k))``.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    codes, factors = [], []
    drawn = 0
    while drawn < num_points:
        num_now = min(batch_size, num_points - drawn)
        batch_factors, batch_observations = data.sample(num_now, random_state)
        codes.append(encode(representation_function, batch_observations))
        factors.append(np.asarray(batch_factors))
        drawn += num_now
    return np.concatenate(codes, axis=0), np.concatenate(factors, axis=0)


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Per code dimension (column), equal-width bin labels 1..num_bins over its observed range.

    Label = ``np.digitize(x, edges[:-1])`` with ``edges`` from ``np.histogram(x, num_bins)``,
    so the maximum lands in the last bin rather than one past it.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (n, d), got shape {codes.shape}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    discretized = np.empty(codes.shape, dtype=np.int64)
    for column in range(codes.shape[1]):
        values = codes[:, column]
        edges = np.histogram(values, num_bins)[1]
        discretized[:, column] = np.digitize(values, edges[:-1])
    return discretized


def discrete_mutual_info(codes_discrete: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Mutual information (nats) between every discrete code and every factor: ``(d, k)``."""
    codes_discrete = np.asarray(codes_discrete)
    factors = np.asarray(factors)
    if codes_discrete.ndim != 2 or factors.ndim != 2 or len(codes_discrete) != len(factors):
        raise ValueError(
            f"need codes (n, d) and factors (n, k) with the same n, got {codes_discrete.shape} and {factors.shape}"
        )
    from sklearn.metrics import mutual_info_score  # lazy: sklearn costs ~2 s to import

    num_codes, num_factors = codes_discrete.shape[1], factors.shape[1]
    mutual_info = np.zeros((num_codes, num_factors))
    for i in range(num_codes):
        for j in range(num_factors):
            # Argument order as in the reference (factor first): the sum is
            # symmetric, but the float rounding need not be.
            mutual_info[i, j] = mutual_info_score(factors[:, j], codes_discrete[:, i])
    return mutual_info


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each discrete factor column, computed as MI(y, y): ``(k,)``."""
    factors = np.asarray(factors)
    if factors.ndim != 2:
        raise ValueError(f"factors must be (n, k), got shape {factors.shape}")
    from sklearn.metrics import mutual_info_score

    return np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])

