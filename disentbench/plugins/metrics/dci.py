"""DCI disentanglement, completeness and informativeness (Eastwood & Williams 2018),
as the study computes it (spec section 4, "DCI").

For each factor j a gradient-boosted tree classifier (sklearn defaults: 100
trees, learning rate 0.1, depth 3) predicts y_j from the raw codes. Its
impurity-based feature importances form column j of the importance matrix
R ``(d, k)``. With P_i = R_i. / sum_j R_ij and entropy H_K in base K = k,

    D = sum_i rho_i (1 - H_K(P_i)),   rho_i = sum_j R_ij / sum R,

and completeness C is the same on the columns of R with base d. 1e-11 is added
to every entry before the entropies (as in the reference); an all-zero R is
weighted uniformly. Informativeness is the classifiers' mean *accuracy* on the
train and test splits (the reference's choice, not the paper's regression error).

Randomness: the reference leaves the classifiers' ``random_state`` unset, so
every tree draws its splitter seed from numpy's *global* random state (one
draw per tree, the factors fitted in order). That seed orders the features a
split search visits, which decides ties and, through floating-point rounding,
near-ties; the scores therefore vary from run to run, by ~1e-3 to 1e-2 on a
noisy continuous code (measured with sklearn 1.9). disentbench makes this reproducible without touching the
draws the reference makes from the metric's ``RandomState``:

* an int seed s is hashed from the metric's ``RandomState`` *state as handed
  to the metric*, read before any draw (reading consumes nothing, so the
  sampled data are the reference's);
* all classifiers draw from one ``RandomState(s)`` in the reference's order
  (factor 0's trees, then factor 1's, ...), in place of the global state.

So the scores equal, exactly, the reference's ``_compute_dci`` / ``compute_dci``
run right after ``np.random.seed(s)`` (``s = classifier_seed(random_state)``),
and ``score_representation(seed=s0)`` equals ``score_codes`` on the same
sampled arrays with ``seed=s0``. With ``n_jobs`` > 1 the factors are fitted in
threads, each starting from the state the sequential order would reach (one
``randint(0, 2**31 - 1)`` per tree, as sklearn draws); the chain of states is
checked after the fits and the sequential path is taken if it does not hold,
so ``n_jobs`` never changes a score.

Under the study seed convention (``evaluation.seed_convention: study``, see
:class:`~disentbench.core.evaluation.sampling.StudyRandomState`) the
classifiers draw instead from the random state's stand-in for numpy's global
state, ``RandomState(seed)``: the scores are then the reference's run right
after ``np.random.seed(seed)`` with ``RandomState(seed)``, the study's own seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field, field_validator

from disentbench import GroundTruthData, Metric, PluginConfig, hookimpl
from disentbench.core.evaluation.boosting import gradient_boosting_classifier
from disentbench.core.evaluation.sampling import (
    boosted_tree_draws,
    check_random_state,
    copy_state,
    generate_batch_factor_code,
    global_stream,
    same_state,
    stream_positions,
)


class DCIConfig(PluginConfig):
    num_train: int = Field(10000, ge=1, description="Points drawn to fit the gradient-boosted trees (study: 10000).")
    num_test: int = Field(5000, ge=1, description="Fresh points for the test informativeness (study: 5000).")
    batch_size: int = Field(16, ge=1, description="Observations encoded per call of the representation function (study: 16).")
    n_jobs: int = Field(
        1,
        description="Factors fitted in parallel threads (-1 = all cores). Never changes the scores. "
        "Not a study setting.",
    )
    fast: bool = Field(
        False,
        description="Fast mode (evaluation.fast): trees with scikit-learn's candidate splits grown level by level, "
        "near-ties decided by their own sums instead of scikit-learn's order. Not the study's numbers: within 0.02 "
        "of them on the benchmark's cases (benchmarks/README.md).",
    )
    @field_validator("n_jobs")
    @classmethod
    def _jobs_nonzero(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("n_jobs must be a positive number of threads or -1 (all cores)")
        return value


def classifier_seed(random_state: np.random.RandomState | None) -> int:
    """The int seed of the classifiers' random stream, hashed from ``random_state``'s state without drawing.

    ``None`` behaves like ``RandomState(0)``.
    """
    if random_state is None:
        random_state = np.random.RandomState(0)
    _, key, position, _, _ = check_random_state(random_state).get_state()
    entropy = [int(word) for word in key] + [int(position)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def _fit_factor(codes, targets, codes_test, targets_test, tree_random_state, fast=False):
    # A RandomState instance (not an int): the trees draw from it in turn, as
    # the reference's trees draw from the global state. scikit-learn's class, or
    # its presorted subclass: the same trees, several times faster. Fast mode:
    # scikit-learn's candidate splits grown level by level (the same draws).
    model = gradient_boosting_classifier(trees="levelwise" if fast else "exact", random_state=tree_random_state)
    model.fit(codes, targets)
    importance = np.abs(model.feature_importances_)
    train_accuracy = np.mean(model.predict(codes) == targets)
    test_accuracy = np.mean(model.predict(codes_test) == targets_test)
    return importance, train_accuracy, test_accuracy


def _fit_parallel(jobs, factors, tree_random_state, n_jobs, fast=False):
    """Fit factors in threads from precomputed stream positions; None if the positions prove wrong.

    On success ``tree_random_state`` ends where the sequential fits would leave it;
    otherwise it is untouched.
    """
    from joblib import Parallel, delayed

    starts, replay = stream_positions(tree_random_state, [boosted_tree_draws(factors[:, j]) for j in range(factors.shape[1])])
    streams = [copy_state(start) for start in starts]
    # Threads: the tree builder releases the GIL, and the arrays need no copies.
    results = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_fit_factor)(*job, stream, fast) for job, stream in zip(jobs, streams)
    )
    ends = starts[1:] + [replay]
    if not all(same_state(stream, end) for stream, end in zip(streams, ends)):
        return None  # sklearn drew differently than assumed: the positions were wrong
    tree_random_state.set_state(replay.get_state())
    return results


def importance_matrix_gbt(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    tree_random_state: np.random.RandomState,
    n_jobs: int = 1,
    fast: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Importance matrix R ``(d, k)`` and per-factor train and test accuracies ``(k,)``.

    One ``GradientBoostingClassifier()`` (sklearn's defaults) per factor, all
    drawing their trees' seeds from ``tree_random_state``, factor after factor;
    with ``fast``, fast mode's level-wise trees (near-ties decided by their own sums), same draws.
    """
    num_factors = factors.shape[1]
    jobs = [(codes, factors[:, j], codes_test, factors_test[:, j]) for j in range(num_factors)]
    results = None
    if n_jobs != 1 and num_factors > 1:
        results = _fit_parallel(jobs, factors, tree_random_state, n_jobs, fast)
    if results is None:
        results = [_fit_factor(*job, tree_random_state, fast) for job in jobs]
    importance = np.zeros((codes.shape[1], num_factors), dtype=np.float64)
    for j, (column, _, _) in enumerate(results):
        importance[:, j] = column
    train_accuracy = np.array([result[1] for result in results])
    test_accuracy = np.array([result[2] for result in results])
    return importance, train_accuracy, test_accuracy


def disentanglement_per_code(importance: np.ndarray) -> np.ndarray:
    """1 - H_K(P_i) for each code i, P_i the normalised row i of R ``(d, k)``: ``(d,)``."""
    from scipy.stats import entropy

    importance = np.asarray(importance, dtype=np.float64)
    return 1.0 - entropy(importance.T + 1e-11, base=importance.shape[1])


def disentanglement(importance: np.ndarray) -> float:
    """D: per-code disentanglement weighted by each code's share of the total importance."""
    importance = np.asarray(importance, dtype=np.float64)
    per_code = disentanglement_per_code(importance)
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    code_weight = importance.sum(axis=1) / importance.sum()
    return float(np.sum(per_code * code_weight))


def completeness_per_factor(importance: np.ndarray) -> np.ndarray:
    """1 - H_d(P_.j) for each factor j, P_.j the normalised column j of R ``(d, k)``: ``(k,)``."""
    from scipy.stats import entropy

    importance = np.asarray(importance, dtype=np.float64)
    return 1.0 - entropy(importance + 1e-11, base=importance.shape[0])


def completeness(importance: np.ndarray) -> float:
    """C: per-factor completeness weighted by each factor's share of the total importance."""
    importance = np.asarray(importance, dtype=np.float64)
    per_factor = completeness_per_factor(importance)
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    factor_weight = importance.sum(axis=0) / importance.sum()
    return float(np.sum(per_factor * factor_weight))


def scores_from_importance(importance: np.ndarray) -> dict[str, float]:
    """``disentanglement`` and ``completeness`` of an importance matrix R ``(d, k)``."""
    return {"disentanglement": disentanglement(importance), "completeness": completeness(importance)}


def compute_dci_from_codes(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    random_state: np.random.RandomState | None = None,
    n_jobs: int = 1,
    tree_random_state: np.random.RandomState | None = None,
    fast: bool = False,
) -> dict[str, float]:
    """DCI of train codes ``(n, d)`` / factors ``(n, k)`` and a test split; keys as the reference.

    The classifiers draw from ``tree_random_state`` when given (it is
    consumed), else from the global-state stand-in of a study-convention
    ``random_state``, else from a stream seeded from ``random_state``'s
    current state (see :func:`classifier_seed` and the module docstring;
    ``None`` acts as ``RandomState(0)``). ``fast``: fast mode's trees.
    """
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes_test is None or factors_test is None:
        raise ValueError("DCI needs a test split: pass codes_test and factors_test")
    codes_test, factors_test = np.asarray(codes_test), np.asarray(factors_test)
    for name, (c, f) in {"train": (codes, factors), "test": (codes_test, factors_test)}.items():
        if c.ndim != 2 or f.ndim != 2 or len(c) != len(f):
            raise ValueError(f"need {name} codes (n, d) and factors (n, k) with the same n, got {c.shape} and {f.shape}")
    if codes_test.shape[1] != codes.shape[1] or factors_test.shape[1] != factors.shape[1]:
        raise ValueError(
            f"train and test splits differ in width: codes {codes.shape} vs {codes_test.shape}, "
            f"factors {factors.shape} vs {factors_test.shape}"
        )
    if tree_random_state is None:
        tree_random_state = global_stream(random_state) or np.random.RandomState(classifier_seed(random_state))
    importance, train_accuracy, test_accuracy = importance_matrix_gbt(
        codes, factors, codes_test, factors_test, tree_random_state, n_jobs, fast
    )
    return {
        "informativeness_train": float(np.mean(train_accuracy)),
        "informativeness_test": float(np.mean(test_accuracy)),
        **scores_from_importance(importance),
    }


class DCI(Metric):
    """The DCI metric: draws ``num_train`` then ``num_test`` points, then scores their codes."""

    name = "dci"
    description = (
        "DCI (Eastwood & Williams 2018): disentanglement and completeness from gradient-boosted-tree "
        "feature importances, informativeness as their accuracy"
    )
    config_class = DCIConfig
    config: DCIConfig

    #: the score a summary table shows
    headline = ("disentanglement",)

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: Callable[[np.ndarray], np.ndarray],
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        check_random_state(random_state)
        # The classifiers draw from the study convention's stand-in for numpy's
        # global state; failing that, their seed comes from the state handed to
        # us, before any draw (a copy keeps it while the original is consumed
        # by the sampling).
        trees = global_stream(random_state) or np.random.RandomState(classifier_seed(copy_state(random_state)))
        codes, factors = generate_batch_factor_code(
            data, representation_function, self.config.num_train, random_state, self.config.batch_size
        )
        codes_test, factors_test = generate_batch_factor_code(
            data, representation_function, self.config.num_test, random_state, self.config.batch_size
        )
        return compute_dci_from_codes(
            codes, factors, codes_test, factors_test, n_jobs=self.config.n_jobs, tree_random_state=trees,
            fast=self.config.fast,
        )

    def score_codes(self, codes, factors, codes_test=None, factors_test=None, random_state=None) -> dict[str, float]:
        """The array core (``disentbench.score_codes``); the classifiers are seeded from ``random_state``."""
        return compute_dci_from_codes(
            codes, factors, codes_test, factors_test, random_state, self.config.n_jobs, fast=self.config.fast
        )


@hookimpl
def register_metrics(register):
    register(DCI)
