"""The presorted gradient-boosted trees grow scikit-learn's trees exactly (core/evaluation/presorted_trees.py, boosting.py).

Each case fits scikit-learn's ``GradientBoostingClassifier`` and the presorted
subclass from the same random state and compares every tree node by node,
the predicted probabilities bit for bit, the impurity importances and the
random state left behind. The cases aim at the places an exact re-implementation
can go wrong: ties in the features (float32 duplicates, rounded values), a
constant feature, separable labels (pure nodes), two classes, tiny training
sets (many features splitting a node identically: the tie-break draws),
values closer than scikit-learn's 1e-7 threshold, deeper trees.
"""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from disentbench.core.evaluation import boosting

pytestmark = pytest.mark.skipif(boosting.presorted_class() is None, reason="numba or a scikit-learn >= 1.4 is missing")


def _case(kind: str, seed: int = 0):
    rng = np.random.RandomState(seed)
    n = {"tiny": 12, "small": 40}.get(kind, 400)
    classes = 2 if kind == "binary" else 5
    labels = rng.randint(0, classes, size=n)
    codes = np.c_[labels + rng.randn(n) * 0.9, rng.randn(n, 4)]
    if kind == "rounded":
        codes = np.round(codes, 1)  # many exact ties in every feature
    elif kind == "duplicates":
        codes[rng.rand(n) < 0.3, 1] = 0.5  # a block of identical values
        codes[:, 2] = codes[rng.randint(0, n, size=n), 2]  # repeated values everywhere in one feature
    elif kind == "constant":
        codes[:, 3] = 1.25
    elif kind == "separable":
        codes[:, 0] = labels * 2.0  # perfectly separating: pure nodes
    elif kind == "duplicate_rows":
        # repeated observations (as sampling factors with replacement gives): equal codes, equal labels
        repeat = rng.randint(0, n, size=n // 4)
        codes[: n // 4], labels[: n // 4] = codes[repeat], labels[repeat]
    elif kind == "close_values":
        codes[:, 1] = 1.0 + rng.randint(0, 4, size=n) * 4e-8  # within scikit-learn's FEATURE_THRESHOLD of each other
    return codes, labels


def _fit_both(codes, labels, **params):
    reference = GradientBoostingClassifier(random_state=np.random.RandomState(11), **params).fit(codes, labels)
    ours = boosting.presorted_class()(random_state=np.random.RandomState(11), **params).fit(codes, labels)
    return reference, ours


def _assert_same(reference, ours, codes):
    assert reference.estimators_.shape == ours.estimators_.shape
    for a, b in zip(reference.estimators_.ravel(), ours.estimators_.ravel()):
        ta, tb = a.tree_, b.tree_
        assert ta.node_count == tb.node_count
        assert ta.max_depth == tb.max_depth
        for field in ("children_left", "children_right", "feature", "threshold", "n_node_samples", "weighted_n_node_samples"):
            np.testing.assert_array_equal(getattr(ta, field), getattr(tb, field), err_msg=field)
        # bit for bit where scikit-learn's summation order is known; else within rounding of the mean square
        np.testing.assert_allclose(ta.impurity, tb.impurity, rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(ta.value[ta.children_left == -1], tb.value[tb.children_left == -1])
    test = np.random.RandomState(99).randn(300, codes.shape[1]) * codes.std(axis=0) + codes.mean(axis=0)
    for data in (codes, test):
        np.testing.assert_array_equal(reference.predict_proba(data), ours.predict_proba(data))
    np.testing.assert_allclose(reference.feature_importances_, ours.feature_importances_, rtol=0, atol=1e-12)
    state_a, state_b = reference.random_state.get_state(), ours.random_state.get_state()
    np.testing.assert_array_equal(state_a[1], state_b[1])
    assert state_a[2:] == state_b[2:]


@pytest.mark.parametrize(
    "kind",
    ["continuous", "rounded", "duplicates", "duplicate_rows", "constant", "separable", "binary", "tiny", "small", "close_values"],
)
def test_same_trees_as_scikit_learn(kind):
    codes, labels = _case(kind)
    reference, ours = _fit_both(codes, labels, n_estimators=12)
    _assert_same(reference, ours, codes)
    assert ours.presorted_trees_ + ours.sklearn_trees_ == ours.estimators_.size
    assert ours.presorted_trees_ > 0, "every tree went to scikit-learn: the comparison would test nothing"


@pytest.mark.parametrize("kind", ["continuous", "duplicate_rows"])
def test_most_trees_are_grown_presorted(kind):
    """Repeated observations tie in every code, but with equal targets: their order changes no sum."""
    codes, labels = _case(kind, seed=3)
    _, ours = _fit_both(codes, labels, n_estimators=20)
    assert ours.presorted_trees_ >= 0.9 * ours.estimators_.size


@pytest.mark.parametrize("max_depth", [1, 2, 5])
def test_other_depths(max_depth):
    codes, labels = _case("continuous", seed=1)
    reference, ours = _fit_both(codes, labels, n_estimators=8, max_depth=max_depth)
    _assert_same(reference, ours, codes)


@pytest.mark.parametrize("params", [{"subsample": 0.7}, {"loss": "exponential"}, {"min_samples_leaf": 3}])
def test_unsupported_settings_run_scikit_learns_own_stage(params):
    codes, labels = _case("binary" if params.get("loss") == "exponential" else "continuous", seed=2)
    reference, ours = _fit_both(codes, labels, n_estimators=6, **params)
    _assert_same(reference, ours, codes)
    assert ours.presorted_trees_ == 0


def test_an_int_seed_and_pickling():
    codes, labels = _case("continuous", seed=4)
    reference = GradientBoostingClassifier(n_estimators=6, random_state=5).fit(codes, labels)
    ours = boosting.presorted_class()(n_estimators=6, random_state=5).fit(codes, labels)
    restored = pickle.loads(pickle.dumps(ours))
    np.testing.assert_array_equal(reference.predict_proba(codes), restored.predict_proba(codes))
    assert not hasattr(restored, "_presorted") or restored._presorted is None


def test_fits_in_threads_equal_fits_in_sequence():
    cases = [_case("continuous", seed=s) for s in (5, 6, 7)]
    cls = boosting.presorted_class()
    sequential = [cls(n_estimators=8, random_state=np.random.RandomState(s)).fit(*c) for s, c in enumerate(cases)]
    parallel: list = [None] * len(cases)

    def fit(i):
        parallel[i] = cls(n_estimators=8, random_state=np.random.RandomState(i)).fit(*cases[i])

    threads = [threading.Thread(target=fit, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (codes, _), a, b in zip(cases, sequential, parallel):
        np.testing.assert_array_equal(a.predict_proba(codes), b.predict_proba(codes))


def test_the_switch_and_the_factory(monkeypatch):
    assert boosting.enabled()
    model = boosting.gradient_boosting_classifier(random_state=3)
    assert type(model) is boosting.presorted_class()
    assert model.get_params()["random_state"] == 3
    monkeypatch.setenv(boosting.ENV_SWITCH, "0")
    assert not boosting.enabled()
    assert type(boosting.gradient_boosting_classifier(random_state=3)) is GradientBoostingClassifier
    assert boosting.builder_name() == "scikit-learn"


def test_a_failed_self_check_warns_and_falls_back(monkeypatch):
    monkeypatch.setattr(boosting, "same_fit", lambda *args, **kwargs: False)
    boosting._self_check.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="self-check"):
            assert not boosting.enabled()
        assert type(boosting.gradient_boosting_classifier()) is GradientBoostingClassifier
    finally:
        boosting._self_check.cache_clear()


def test_without_numba_the_factory_gives_scikit_learns_class(monkeypatch):
    from disentbench.core.evaluation import presorted_trees

    monkeypatch.setattr(presorted_trees, "_builder", lambda: None)  # what a missing numba leaves
    boosting.presorted_class.cache_clear()
    boosting._self_check.cache_clear()
    try:
        assert boosting.presorted_class() is None
        assert not boosting.enabled()
        assert type(boosting.gradient_boosting_classifier(random_state=1)) is GradientBoostingClassifier
    finally:
        boosting.presorted_class.cache_clear()
        boosting._self_check.cache_clear()
