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



class StudyRandomState(np.random.RandomState):
    """A metric's ``RandomState(seed)`` under the study seed convention, with a stand-in for numpy's global state.

    Where the study code leaves an estimator's ``random_state`` unset (the
    gradient-boosted trees of DCI and of the downstream task), scikit-learn
    draws from numpy's *global* random state, which the study never seeded, so
    its numbers were not reproducible. Under the study convention that global
    state is taken to have been seeded with the metric's own seed just before
    the metric ran (``np.random.seed(seed)``): :attr:`global_stream` is that
    state, a second ``RandomState(seed)``, independent of the first. Metrics
    read it with :func:`global_stream`; it never touches numpy's real global
    state, so evaluations can run side by side in threads.
    """

    def __init__(self, seed: int):
        super().__init__(seed)
        self.global_stream = np.random.RandomState(seed)


def global_stream(random_state: np.random.RandomState | None) -> np.random.RandomState | None:
    """The stand-in for numpy's global state that ``random_state`` carries (study convention), else None."""
    return getattr(random_state, "global_stream", None)


def copy_state(random_state: np.random.RandomState) -> np.random.RandomState:
    """A new ``RandomState`` at the same position as ``random_state`` (which is not consumed)."""
    copy = np.random.RandomState()
    copy.set_state(random_state.get_state())
    return copy


def same_state(first: np.random.RandomState, second: np.random.RandomState) -> bool:
    """Whether two random states are at the same position of the same stream."""
    a, b = first.get_state(), second.get_state()
    return a[2:] == b[2:] and np.array_equal(a[1], b[1])  # type: ignore[index]  # numpy stubs type legacy get_state() as maybe-dict; it is the tuple


#: scikit-learn's trees draw one ``randint(0, RAND_R_MAX)`` each for their splitter.
RAND_R_MAX = 0x7FFFFFFF


def boosted_tree_draws(labels: np.ndarray, num_estimators: int = 100) -> int:
    """Draws a ``GradientBoostingClassifier`` (``subsample=1``) makes from its random state when fitted on ``labels``.

    One tree, and so one draw, per boosting stage and class (one per stage for
    two classes); none for a single class (scikit-learn refuses to fit it).
    """
    num_classes = len(np.unique(labels))
    if num_classes < 2:
        return 0
    return num_estimators * (1 if num_classes == 2 else num_classes)


def stream_positions(stream: np.random.RandomState, draws: list[int]) -> tuple[list[np.random.RandomState], np.random.RandomState]:
    """Where each of a sequence of consumers starts in ``stream`` if the i-th makes ``draws[i]`` draws.

    Returns (a fresh ``RandomState`` at each start, one at the end), so that
    consumers run in any order or in parallel see exactly the numbers the
    sequential order would give them; ``stream`` itself is not consumed.
    Compare each consumer's state after its work with the next start
    (:func:`same_state`) to prove the assumed draw counts right.
    """
    replay = copy_state(stream)
    starts = []
    for count in draws:
        starts.append(copy_state(replay))
        for _ in range(count):
            replay.randint(0, RAND_R_MAX)
    return starts, replay
