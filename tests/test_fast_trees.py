"""Fast mode's boosted trees (core/evaluation/histogram_trees.py, presorted_trees.OwnTiesGradientBoostingClassifier).

Not exact mode's numbers, so the properties are: with every cut kept the binned
builder grows scikit-learn's trees; the bins are the quantiles and midpoints the
docstring promises; the own-ties trees hand no tree to scikit-learn yet stay
scikit-learn's model; both take the random draws scikit-learn's trees take.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from disentbench.core.evaluation import boosting

pytestmark = pytest.mark.skipif(boosting.presorted_class() is None, reason="numba or a scikit-learn >= 1.4 is missing")


def _continuous(n=300, classes=3, seed=0):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, classes, size=n)
    return np.c_[labels + rng.randn(n), rng.randn(n, 3)].astype(np.float32), labels


def test_bins_keep_every_cut_below_the_limit_and_quantiles_above():
    from disentbench.core.evaluation.histogram_trees import bin_features

    rng = np.random.RandomState(1)
    X = np.c_[np.round(rng.randn(500), 1), rng.randn(500), np.full(500, 2.0)].astype(np.float32)
    order = np.argsort(X, axis=0, kind="stable").T.copy()
    bins, counts = bin_features(order, np.take_along_axis(X.T, order, axis=1), max_bins=64)
    distinct, index = np.unique(X[:, 0], return_inverse=True)
    assert counts[0] == len(distinct) <= 64
    assert np.array_equal(bins[0], index)  # every distinct value its own bin, in order
    assert counts[1] == 64  # 500 distinct values: 63 quantile cuts
    sizes = np.bincount(bins[1], minlength=64)
    assert sizes.min() >= 500 // 64 - 1 and sizes.max() <= 500 // 64 + 2  # evenly filled
    assert np.all(np.diff(bins[1][order[1]].astype(int)) >= 0)  # bins follow the values
    assert counts[2] == 1 and np.all(bins[2] == 0)  # a constant feature: one bin, never split


def test_with_every_cut_kept_the_binned_trees_are_scikit_learns():
    from disentbench.core.evaluation.histogram_trees import HistogramGradientBoostingClassifier

    codes, labels = _continuous(n=1000)
    # continuous features and large nodes: no two candidate splits tie, so the feature order cannot matter
    reference = GradientBoostingClassifier(n_estimators=5, random_state=np.random.RandomState(4)).fit(codes, labels)
    ours = HistogramGradientBoostingClassifier(n_estimators=5, random_state=np.random.RandomState(4)).fit(codes, labels)
    assert ours.sklearn_trees_ == 0 and ours.presorted_trees_ == reference.estimators_.size
    for a, b in zip(reference.estimators_.ravel(), ours.estimators_.ravel()):
        ta, tb = a.tree_, b.tree_
        assert ta.node_count == tb.node_count
        for field in ("children_left", "children_right", "feature", "threshold", "n_node_samples"):
            assert np.array_equal(getattr(ta, field), getattr(tb, field)), field
        np.testing.assert_allclose(ta.impurity, tb.impurity, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reference.predict_proba(codes), ours.predict_proba(codes), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reference.feature_importances_, ours.feature_importances_, atol=1e-9)
    # one draw per tree, as scikit-learn's trees take
    assert reference.random_state.randint(10**9) == ours.random_state.randint(10**9)


def test_binned_trees_stay_close_when_bins_are_coarse():
    from disentbench.core.evaluation.histogram_trees import HistogramGradientBoostingClassifier

    codes, labels = _continuous(n=2000, classes=4, seed=2)
    test_codes, test_labels = _continuous(n=1000, classes=4, seed=3)

    class Coarse(HistogramGradientBoostingClassifier):
        max_bins = 128  # ~16 points per bin

    reference = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(codes, labels)
    ours = Coarse(n_estimators=30, random_state=0).fit(codes, labels)
    assert any(
        not np.array_equal(a.tree_.threshold, b.tree_.threshold)
        for a, b in zip(reference.estimators_.ravel(), ours.estimators_.ravel())
    )  # the bins did restrict the splits
    accuracy = [np.mean(model.predict(test_codes) == test_labels) for model in (reference, ours)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.02
    assert np.argmax(ours.feature_importances_) == np.argmax(reference.feature_importances_) == 0


def test_own_ties_trees_hand_nothing_to_scikit_learn():
    rng = np.random.RandomState(0)
    n = 400
    labels = rng.randint(0, 5, size=n)
    codes = np.round(np.c_[labels + rng.randn(n) * 0.9, rng.randn(n, 4)], 1)  # ties everywhere: near-tie decisions
    exact = boosting.gradient_boosting_classifier(random_state=np.random.RandomState(11)).fit(codes, labels)
    fast = boosting.gradient_boosting_classifier(trees="own_ties", random_state=np.random.RandomState(11)).fit(codes, labels)
    assert exact.sklearn_trees_ > 0  # the case does reach scikit-learn's builder in exact mode
    assert fast.sklearn_trees_ == 0 and fast.presorted_trees_ == fast.estimators_.size
    assert np.mean(exact.predict(codes) == fast.predict(codes)) >= 0.95
    assert exact.random_state.randint(10**9) == fast.random_state.randint(10**9)  # the same draws


def test_the_factory_names_its_variants_and_falls_back_to_exact(monkeypatch):
    from disentbench.core.evaluation.histogram_trees import HistogramGradientBoostingClassifier

    assert isinstance(boosting.gradient_boosting_classifier(trees="binned"), HistogramGradientBoostingClassifier)
    with pytest.raises(ValueError, match="unknown tree variant 'histogram'; use one of exact, own_ties, binned"):
        boosting.gradient_boosting_classifier(trees="histogram")
    monkeypatch.setenv(boosting.ENV_SWITCH, "0")  # the presorted machinery off: scikit-learn's own class, exact
    assert type(boosting.gradient_boosting_classifier(trees="binned")) is GradientBoostingClassifier
