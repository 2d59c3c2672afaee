"""The public scoring API: metrics on arrays, and metrics/tasks on any representation.

Two levels:

* :func:`score_codes` - the deterministic core of a metric on arrays you already
  have: ``codes`` float ``(n, d)``, ``factors`` integer factor indices ``(n, k)``,
  samples in rows (disentanglement_lib holds them transposed).
* :func:`score_representation` - the full sampling protocol of a metric or
  task: it draws from ``dataset`` (anything with the ground-truth-data
  interface) and encodes with ``representation`` (numpy in, numpy out); no
  torch model needed.

Metric and task plugins are callables ``(data, representation_function,
random_state) -> dict``; those with an array core also define
``score_codes(codes, factors, codes_test, factors_test, random_state) -> dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from disentbench.core.evaluation.sampling import StudyRandomState
from disentbench.core.registry import PluginRegistry, get_plugin_manager


def _scorer(name: str, params: dict[str, Any], registry: PluginRegistry | None):
    registry = registry or get_plugin_manager()
    for kind in ("metric", "task"):
        if name in registry.plugins[kind]:
            registration = registry.get(kind, name)
            return registration.factory(registration.make_config(params))
    known = ", ".join(registry.names("metric") + registry.names("task"))
    raise KeyError(f"unknown metric or task {name!r}; known: {known}")


def score_codes(
    name: str,
    codes,
    factors,
    codes_test=None,
    factors_test=None,
    *,
    seed: int = 0,
    study_convention: bool = False,
    registry: PluginRegistry | None = None,
    **params,
) -> dict[str, float]:
    """Score ``codes`` (n, d) against integer ``factors`` (n, k) with metric ``name``.

    Metrics that need a held-out split (DCI, SAP, explicitness) take
    ``codes_test``/``factors_test``; ``seed`` seeds any estimator randomness.
    ``study_convention``: estimators the study code left unseeded draw from
    ``RandomState(seed)`` standing for numpy's global state, so the scores equal
    the study code's run right after ``np.random.seed(seed)`` (docs/fidelity.md).
    ``params`` are the metric's config fields (``disentbench plugins show metric NAME``).
    """
    scorer = _scorer(name, params, registry)
    if not hasattr(scorer, "score_codes"):
        raise TypeError(
            f"{name!r} has no array-level core (it samples from the dataset itself); use score_representation"
        )
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(f"need codes (n, d) and factors (n, k) with the same n, got {codes.shape} and {factors.shape}")
    if codes_test is not None:
        codes_test = np.asarray(codes_test, dtype=np.float64)
        factors_test = np.asarray(factors_test)
    scores = scorer.score_codes(codes, factors, codes_test, factors_test, _random_state(seed, study_convention))
    return {key: float(value) for key, value in scores.items()}


def _random_state(seed: int, study_convention: bool) -> np.random.RandomState:
    return StudyRandomState(seed) if study_convention else np.random.RandomState(seed)


class _GroundTruthAdapter:
    """Gives any object with factor_sizes / sample_factors / sample_observations_from_factors
    the few derived methods the metrics use."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    @property
    def num_factors(self) -> int:
        return len(self._dataset.factor_sizes)

    def sample(self, num, random_state):
        factors = self._dataset.sample_factors(num, random_state)
        return factors, self._dataset.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num, random_state):
        return self.sample(num, random_state)[1]


def score_representation(
    name: str,
    dataset,
    representation: Callable[[np.ndarray], np.ndarray],
    *,
    seed: int = 0,
    study_convention: bool = False,
    registry: PluginRegistry | None = None,
    **params,
) -> dict[str, float]:
    """Score a representation with metric or task ``name`` by the study's sampling protocol.

    ``dataset`` needs ``factor_sizes``, ``sample_factors(n, random_state)`` and
    ``sample_observations_from_factors(factors, random_state)``;
    ``representation`` maps a numpy batch of observations to codes ``(n, d)``.
    ``seed`` seeds the ``numpy.random.RandomState`` all draws come from;
    ``study_convention`` as for :func:`score_codes`: with the study's seed for
    this metric, the scores are the study code's bit for bit.
    """
    for needed in ("factor_sizes", "sample_factors", "sample_observations_from_factors"):
        if not hasattr(dataset, needed):
            raise TypeError(f"dataset lacks {needed!r}; it needs the ground-truth-data interface")
    scorer = _scorer(name, params, registry)
    scores = scorer(_GroundTruthAdapter(dataset), representation, _random_state(seed, study_convention))
    return {key: float(value) for key, value in scores.items()}
