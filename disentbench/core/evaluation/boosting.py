"""Which gradient-boosted trees the study's GBT scorers use: scikit-learn's, or the same trees presorted.

:func:`gradient_boosting_classifier` is what DCI and the GBT downstream task
call for the study's ``GradientBoostingClassifier()``. It gives the presorted
subclass (``core/evaluation/presorted_trees.py``: the same trees, several
times faster) when numba is importable, ``DISENTBENCH_PRESORTED_TREES`` is not
``0``, and a self-check passed in this process: one small case fitted both
ways must agree bit for bit (trees, probabilities, importances, random state).
Otherwise it gives scikit-learn's own class, so a scikit-learn release that
changes its tree builder costs speed, never correctness.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from typing import Any

import numpy as np

from disentbench.core.evaluation.sampling import same_state

#: Environment switch: ``0`` uses scikit-learn's tree builder everywhere (same numbers, slower).
ENV_SWITCH = "DISENTBENCH_PRESORTED_TREES"

_lock = threading.Lock()


def _sklearn_class():
    from sklearn.ensemble import GradientBoostingClassifier  # lazy: scikit-learn is slow to import

    return GradientBoostingClassifier


@functools.cache
def presorted_class():
    """The presorted subclass, or None where it cannot run here (numba missing, scikit-learn too old or changed)."""
    try:
        from disentbench.core.evaluation import presorted_trees
    except ImportError:  # numba missing, or scikit-learn's private names moved: its own class is the safe answer
        return None
    return presorted_trees.PresortedGradientBoostingClassifier if presorted_trees.available() else None


def _self_check_case():
    rng = np.random.RandomState(12345)
    n = 600
    labels = rng.randint(0, 4, size=n)
    codes = np.c_[labels + rng.randn(n) * 0.8, rng.randn(n, 3), np.round(rng.randn(n), 1)]
    return codes, labels


@functools.cache
def _self_check() -> bool:
    """Fit one case with scikit-learn and with the subclass: True when predictions, trees and the random state agree."""
    cls = presorted_class()
    if cls is None:
        return False
    codes, labels = _self_check_case()
    reference = _sklearn_class()(n_estimators=15, random_state=np.random.RandomState(7))
    ours = cls(n_estimators=15, random_state=np.random.RandomState(7))
    try:
        reference.fit(codes, labels)
        ours.fit(codes, labels)
    except Exception:  # noqa: BLE001 - any failure means: use scikit-learn's own class
        return False
    if same_fit(reference, ours, codes) and ours.presorted_trees_ > 0:
        return True
    warnings.warn(
        "disentbench: the presorted boosted trees disagree with this scikit-learn's on the self-check; "
        "using scikit-learn's own tree builder (same numbers, slower). Please report the scikit-learn version.",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def same_fit(reference, candidate, codes: np.ndarray, importance_tolerance: float = 1e-12) -> bool:
    """Whether two fitted boosted-tree classifiers have the same trees, predictions on ``codes`` and random state."""
    if reference.estimators_.shape != candidate.estimators_.shape:
        return False
    for a, b in zip(reference.estimators_.ravel(), candidate.estimators_.ravel()):
        ta, tb = a.tree_, b.tree_
        if ta.node_count != tb.node_count:
            return False
        for field in ("children_left", "children_right", "feature", "threshold", "n_node_samples"):
            if not np.array_equal(getattr(ta, field), getattr(tb, field)):
                return False
        leaves = ta.children_left == -1
        if not np.array_equal(ta.value[leaves], tb.value[leaves]):
            return False
    if not np.array_equal(reference.predict_proba(codes), candidate.predict_proba(codes)):
        return False
    if not np.allclose(reference.feature_importances_, candidate.feature_importances_, rtol=0, atol=importance_tolerance):
        return False
    state_a, state_b = reference.random_state, candidate.random_state
    if isinstance(state_a, np.random.RandomState) and isinstance(state_b, np.random.RandomState):
        return same_state(state_a, state_b)
    return True


def enabled() -> bool:
    """Whether :func:`gradient_boosting_classifier` gives the presorted class in this process."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    with _lock:
        return _self_check()


@functools.cache
def _fast_classes() -> dict[str, Any]:
    """Fast mode's subclasses by name, or {} where the presorted class cannot run (they share its machinery)."""
    if presorted_class() is None:
        return {}
    from disentbench.core.evaluation import levelwise_trees

    return {"levelwise": levelwise_trees.LevelwiseGradientBoostingClassifier}


#: The tree variants :func:`gradient_boosting_classifier` builds: exact mode's, and fast mode's.
TREE_VARIANTS = ("exact", "levelwise")


def gradient_boosting_classifier(trees: str = "exact", **params: Any):
    """A ``GradientBoostingClassifier(**params)``: the presorted subclass where :func:`enabled`, else sklearn's own.

    ``trees="levelwise"`` gives fast mode's trees where the presorted class is
    enabled (they share its leaf step and self-check), else the exact trees:
    scikit-learn's candidate splits, grown level by level with no per-tree
    partition and near-ties decided by its own sums
    (``levelwise_trees.LevelwiseGradientBoostingClassifier``).
    """
    if trees not in TREE_VARIANTS:
        raise ValueError(f"unknown tree variant {trees!r}; use one of {', '.join(TREE_VARIANTS)}")
    cls = _fast_classes().get(trees) if trees != "exact" and enabled() else None
    if cls is None:
        cls = presorted_class() if enabled() else None
    if cls is None:
        cls = _sklearn_class()
    return cls(**params)


def builder_name() -> str:
    """One line for logs and benchmarks: which tree builder this process uses."""
    return "presorted (numba)" if enabled() else "scikit-learn"


__all__ = [
    "ENV_SWITCH",
    "enabled",
    "builder_name",
    "gradient_boosting_classifier",
    "TREE_VARIANTS",
    "presorted_class",
    "same_fit",
]

