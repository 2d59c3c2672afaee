"""Fast mode's boosted trees (core/evaluation/levelwise_trees.py).

Not exact mode's numbers, so the properties are: on continuous targets (no two
candidate splits tie) the level-wise builder grows scikit-learn's tree; where
splits tie (the boosting's first stage, tied codes), its index-order
tie-breaking and its own sums decide, yet the classifier stays scikit-learn's
model, never hands a tree to scikit-learn's builder and takes the random
draws scikit-learn's trees take.
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


@pytest.mark.parametrize("friedman", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_continuous_targets_the_levelwise_tree_is_scikit_learns(seed, friedman):
    from sklearn.tree import DecisionTreeRegressor

    from disentbench.core.evaluation.levelwise_trees import build_tree_levelwise

    rng = np.random.RandomState(seed)
    n = 700
    codes = rng.randn(n, 4).astype(np.float32)
    codes[:, 3] = np.round(codes[:, 3])  # a tied feature: its cuts only between distinct values
    targets = np.sin(2 * codes[:, 0]) + 0.3 * rng.randn(n)  # continuous: no two candidate splits tie
    order = np.argsort(codes, axis=0, kind="stable").T.astype(np.int32).copy()
    xsorted = np.take_along_axis(codes.T, order.astype(np.intp), axis=1).copy()
    reciprocal = np.zeros(n + 1)
    reciprocal[1:] = 1.0 / np.arange(1, n + 1)
    reference = DecisionTreeRegressor(max_depth=3, random_state=0).fit(codes, targets).tree_
    grown = build_tree_levelwise(order, xsorted, np.ascontiguousarray(codes.T), targets, 3, friedman, reciprocal)
    status, count, left, right, feature, threshold, impurity, value, samples = grown[:9]
    assert status == 0 and count == reference.node_count
    assert np.array_equal(left[:count], reference.children_left) and np.array_equal(right[:count], reference.children_right)
    assert np.array_equal(feature[:count], reference.feature)
    assert np.array_equal(threshold[:count], reference.threshold)  # midpoints of float32 values, exact
    assert np.array_equal(samples[:count], reference.n_node_samples)
    np.testing.assert_allclose(impurity[:count], reference.impurity, rtol=0, atol=1e-12)
    np.testing.assert_allclose(value[:count], reference.value.ravel(), rtol=0, atol=1e-12)
    assert np.array_equal(grown[-1], reference.apply(codes))  # each sample's leaf


def test_the_levelwise_classifier_stays_scikit_learns_model_and_takes_its_draws():
    from disentbench.core.evaluation.levelwise_trees import LevelwiseGradientBoostingClassifier

    codes, labels = _continuous(n=1000, classes=4)
    test_codes, test_labels = _continuous(n=1000, classes=4, seed=1)
    reference = GradientBoostingClassifier(n_estimators=20, random_state=np.random.RandomState(4)).fit(codes, labels)
    ours = LevelwiseGradientBoostingClassifier(n_estimators=20, random_state=np.random.RandomState(4)).fit(codes, labels)
    assert ours.sklearn_trees_ == 0 and ours.presorted_trees_ == reference.estimators_.size
    # the first stage's gradients take two values per class: exact ties between features, which scikit-learn
    # breaks by its random feature order and this builder by index order, so some trees differ
    same = [np.array_equal(a.tree_.feature, b.tree_.feature) for a, b in zip(reference.estimators_.ravel(), ours.estimators_.ravel())]
    assert 0.5 <= np.mean(same) < 1.0
    accuracy = [np.mean(model.predict(test_codes) == test_labels) for model in (reference, ours)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.02
    np.testing.assert_allclose(reference.feature_importances_, ours.feature_importances_, atol=0.02)
    assert reference.random_state.randint(10**9) == ours.random_state.randint(10**9)  # one draw per tree, as sklearn's


def test_constant_and_tied_features_never_split_where_scikit_learn_cannot():
    from disentbench.core.evaluation.levelwise_trees import LevelwiseGradientBoostingClassifier

    rng = np.random.RandomState(3)
    n = 500
    labels = rng.randint(0, 2, size=n)
    codes = np.c_[np.full(n, 1.5), labels + 0.5 * rng.randn(n), np.round(rng.randn(n))].astype(np.float32)
    model = LevelwiseGradientBoostingClassifier(n_estimators=10, random_state=0).fit(codes, labels)
    for tree in (estimator.tree_ for estimator in model.estimators_.ravel()):
        split = tree.children_left != -1
        assert not np.any(tree.feature[split] == 0)  # the constant code
        thresholds = tree.threshold[split & (tree.feature == 2)]
        assert np.all(np.isin(thresholds, [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]))  # midpoints between the rounded values
    assert model.feature_importances_[0] == 0.0


def test_on_tied_codes_the_trees_stay_scikit_learns_model_and_take_its_draws():
    rng = np.random.RandomState(0)
    n = 400
    labels = rng.randint(0, 5, size=n)
    codes = np.round(np.c_[labels + rng.randn(n) * 0.9, rng.randn(n, 4)], 1)  # ties everywhere: near-tie decisions
    exact = boosting.gradient_boosting_classifier(random_state=np.random.RandomState(11)).fit(codes, labels)
    fast = boosting.gradient_boosting_classifier(trees="levelwise", random_state=np.random.RandomState(11)).fit(codes, labels)
    assert exact.sklearn_trees_ > 0  # the case does reach scikit-learn's builder in exact mode
    assert fast.sklearn_trees_ == 0 and fast.presorted_trees_ == fast.estimators_.size
    assert np.mean(exact.predict(codes) == fast.predict(codes)) >= 0.95
    assert np.argmax(exact.feature_importances_) == np.argmax(fast.feature_importances_) == 0
    assert exact.random_state.randint(10**9) == fast.random_state.randint(10**9)  # the same draws


def test_the_factory_names_its_variants_and_falls_back_to_exact(monkeypatch):
    from disentbench.core.evaluation.levelwise_trees import LevelwiseGradientBoostingClassifier

    assert isinstance(boosting.gradient_boosting_classifier(trees="levelwise"), LevelwiseGradientBoostingClassifier)
    with pytest.raises(ValueError, match="unknown tree variant 'binned'; use one of exact, levelwise"):
        boosting.gradient_boosting_classifier(trees="binned")
    monkeypatch.setenv(boosting.ENV_SWITCH, "0")  # the presorted machinery off: scikit-learn's own class, exact
    assert type(boosting.gradient_boosting_classifier(trees="levelwise")) is GradientBoostingClassifier
