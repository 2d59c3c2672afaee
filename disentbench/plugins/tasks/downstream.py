"""Downstream classification tasks, as the study computes them (spec section 4, "Downstream task").

For each training-set size n in ``num_train`` (in the configured order), a new
training set of n points and a new test set of ``num_test`` points are drawn
(``generate_batch_factor_code``, ``batch_size`` per call, training set first).
For each factor i, a fresh predictor is fitted on codes -> factor i and its
accuracy recorded on the training and the test set. Keys, as the reference
library records them::

    "<n>:mean_train_accuracy", "<n>:mean_test_accuracy",
    "<n>:min_train_accuracy",  "<n>:min_test_accuracy",
    "<n>:train_accuracy_factor_<i>", "<n>:test_accuracy_factor_<i>"

plus ``sample_efficiency`` = mean_test_accuracy(100) / mean_test_accuracy(10000)
when both sizes are configured. The reference library computes no such number:
this is disentbench's definition, after the paper's notion of sample efficiency
(the accuracy reached with few labels relative to the accuracy with many).

Predictors (the reference's, which pass no ``random_state``):

* ``downstream_logistic_regression``: ``LogisticRegressionCV(Cs=10, cv=KFold(n_splits=5))``.
  Its defaults (lbfgs, L2, accuracy for choosing C, unshuffled folds) involve no
  randomness. ``l1_ratios=(0.0,)`` and ``scoring="accuracy"`` are spelled out:
  they are what the reference's defaults meant, and scikit-learn 1.10/1.11
  change those defaults.
* ``downstream_gradient_boosting``: ``GradientBoostingClassifier()`` with its
  defaults. Its only randomness is the tie-breaking order of the features at
  each split, which the reference left unseeded (so its numbers were not
  exactly reproducible). Here each fit gets a seed drawn from ``random_state``
  after *all* sampling is done, so the drawn data are the reference's and
  scores are reproducible. Under the study seed convention
  (``evaluation.seed_convention: study``) the fits draw instead, in the
  reference's order, from ``RandomState(seed)`` standing for numpy's global
  state, so the scores are the reference's run right after ``np.random.seed(seed)``.

Where the reference would crash (a factor with a single value in a small
training set: scikit-learn refuses to fit one class), the predictor is the
constant that value.

Fits are independent, so they run after all sampling, in parallel (``n_jobs``)
in joblib's worker processes: logistic regression's solver and scikit-learn's
per-stage boosting code hold the GIL, so in threads the fits shared one core.
Each fit sees the same data and seed whatever ``n_jobs`` is, and a process
sends its random stream back, so results do not depend on it. During the fits
BLAS and OpenMP are limited
to one thread each (``threadpoolctl``, process-wide while the fits run): on
these small problems threaded BLAS only adds spinning threads, which on a
shared 2-core machine made LogisticRegressionCV about 10x slower (measured; the
scores were identical).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import numpy as np
from pydantic import Field, field_validator

from disentbench import GroundTruthData, PluginConfig, Task, hookimpl
from disentbench.core.evaluation.boosting import gradient_boosting_classifier
from disentbench.core.evaluation.sampling import (
    RepresentationFunction,
    boosted_tree_draws,
    check_random_state,
    copy_state,
    generate_batch_factor_code,
    global_stream,
    same_state,
    stream_positions,
)

#: exclusive upper bound of the per-fit seeds (what RandomState.randint draws)
_SEED_BOUND = 2**31 - 1


class DownstreamConfig(PluginConfig):
    num_train: list[Annotated[int, Field(ge=1)]] = Field(
        [10, 100, 1000, 10000],
        min_length=1,
        description="Training-set sizes, each with its own training and test draw, in this order (study: [10, 100, 1000, 10000]).",
    )
    num_test: int = Field(5000, ge=1, description="Test points drawn for each training-set size (study: 5000).")
    batch_size: int = Field(16, ge=1, description="Observations encoded per call of the representation function (study: 16).")
    n_jobs: int | None = Field(
        -1,
        description="Predictor fits run in parallel in this many worker processes (joblib; -1: all cores; 1 or null: in this process). Speed only: results do not depend on it.",
    )

    @field_validator("n_jobs")
    @classmethod
    def _valid_n_jobs(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("n_jobs must be a positive number of threads, -1 (all cores) or null (one), not 0")
        return value

    @field_validator("num_train")
    @classmethod
    def _distinct_sizes(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"training-set sizes must be distinct (each names its own scores), got {value}")
        return value


def make_logistic_regression_cv(seed: Any):
    """The study's ``logistic_regression_cv`` predictor; it has no randomness, so ``seed`` is unused."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold

    extra = {}
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
        extra["use_legacy_attributes"] = False  # fitted attributes only; silences a transition warning
    return LogisticRegressionCV(Cs=10, cv=KFold(n_splits=5), l1_ratios=(0.0,), scoring="accuracy", **extra)


def make_gradient_boosting(seed: Any):
    """The study's ``gradient_boosting_classifier`` (sklearn defaults), its tie-breaking seeded (an int or a RandomState).

    scikit-learn's class or its presorted subclass (core/evaluation/presorted_trees.py): the same trees, faster.
    """
    return gradient_boosting_classifier(random_state=seed)


def make_fast_logistic_regression_cv(seed: Any):
    """Fast mode's predictor: ``make_logistic_regression_cv`` with 5 values of C (the same range), 3 folds and
    the solver stopping at tolerance 1e-3 rather than 1e-4.

    About 5x fewer fits, each shorter; benchmarks/README.md gives the time and the scores it moves.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold

    extra = {}
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
        extra["use_legacy_attributes"] = False
    return LogisticRegressionCV(Cs=5, cv=KFold(n_splits=3), l1_ratios=(0.0,), scoring="accuracy", tol=1e-3, **extra)


def make_fast_gradient_boosting(seed: Any):
    """Fast mode's predictor: the study's boosted trees, grown level by level (same candidate splits, same draws)."""
    return gradient_boosting_classifier(trees="levelwise", random_state=seed)


class GradientBoostingConfig(DownstreamConfig):
    fast: bool = Field(
        False,
        description="Fast mode (evaluation.fast): for training sets of fast_min_train points or more, the study's "
        "candidate splits grown level by level, near-ties decided by their own sums. Not the study's numbers: within "
        "0.02 of them on the benchmark's cases (benchmarks/README.md).",
    )
    fast_min_train: int = Field(
        5000,
        ge=0,
        description="Fast mode: smaller training sets keep the study's trees. They are cheap, and there the level-wise "
        "trees' other tie-breaking (features in index order) moves small-sample accuracies, which sample_efficiency "
        "amplifies.",
    )


class LogisticRegressionConfig(DownstreamConfig):
    fast: bool = Field(
        False,
        description="Fast mode (evaluation.fast): for training sets of fast_min_train points or more, 5 values of C "
        "over the same range and 3-fold cross-validation instead of 10 and 5, the solver stopping at tolerance 1e-3. Not the study's numbers: within 0.02 "
        "of them on the benchmark's cases (benchmarks/README.md).",
    )
    fast_min_train: int = Field(
        5000,
        ge=0,
        description="Fast mode: smaller training sets keep the study's cross-validation. They are cheap, and there "
        "a coarser choice of C moved the test accuracy by up to 0.035 (100 points); at 10,000 points by 0.004.",
    )


class Classifier(Protocol):
    """What :func:`fit_and_score` uses of an sklearn classifier."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Any: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


def fit_and_score(
    make_predictor: Callable[[Any], Classifier],
    seed: Any,
    codes_train: np.ndarray,
    labels_train: np.ndarray,
    codes_test: np.ndarray,
    labels_test: np.ndarray,
) -> tuple[float, float]:
    """Train and test accuracy of one predictor fitted on ``codes_train`` -> ``labels_train``."""
    classes = np.unique(labels_train)
    if len(classes) < 2:  # the reference crashes here; the only sensible classifier is the constant
        return float(np.mean(labels_train == classes[0])), float(np.mean(labels_test == classes[0]))
    model = make_predictor(seed)
    model.fit(codes_train, labels_train)
    train_accuracy = np.mean(model.predict(codes_train) == labels_train)
    test_accuracy = np.mean(model.predict(codes_test) == labels_test)
    return float(train_accuracy), float(test_accuracy)



def _split(dataset, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(codes_train, labels_train, codes_test, labels_test) of factor ``i``."""
    codes_train, factors_train, codes_test, factors_test = dataset
    return codes_train, factors_train[:, i], codes_test, factors_test[:, i]


def _fit_one(make_predictor, seed_or_stream, codes_train, labels_train, codes_test, labels_test) -> tuple[float, float, Any]:
    """:func:`fit_and_score`, and the random stream as the fit left it (None for an int seed).

    Module-level, so that worker processes can run it; a process fits a copy
    of the stream, and the copy it returns shows where the stream ended.
    """
    train, test = fit_and_score(make_predictor, seed_or_stream, codes_train, labels_train, codes_test, labels_test)
    return train, test, seed_or_stream if isinstance(seed_or_stream, np.random.RandomState) else None


def sample_efficiency(scores: dict[str, float]) -> float | None:
    """mean_test_accuracy(100) / mean_test_accuracy(10000) from recorded scores, or None if either is missing."""
    few, many = scores.get("100:mean_test_accuracy"), scores.get("10000:mean_test_accuracy")
    if few is None or many is None:
        return None
    return float(few / many) if many > 0 else float("nan")


class DownstreamTask(Task):
    """Base of the downstream tasks: sampling, fitting and keys; subclasses name the predictor."""

    #: ``make_predictor(seed or RandomState) -> unfitted sklearn classifier``
    make_predictor: Callable[[Any], Classifier]
    #: ``predictor_draws(labels) -> int``: draws a predictor fitted on ``labels`` makes from its random state
    predictor_draws: Callable[[np.ndarray], int]

    config_class = DownstreamConfig
    config: DownstreamConfig

    def __init__(self, config: DownstreamConfig | None = None):
        super().__init__(config)
        sizes = self.config.num_train
        largest = max(sizes)
        headline = [f"{largest}:mean_test_accuracy"]
        if 100 in sizes and 10000 in sizes:
            headline.append("sample_efficiency")
        #: the scores a summary table shows
        self.headline = tuple(headline)

    def _fit_all(self, datasets, random_state: np.random.RandomState) -> list[tuple[list[float], list[float]]]:
        """(train accuracies, test accuracies) per dataset, one per factor.

        ``datasets`` is a list of (codes_train, factors_train, codes_test,
        factors_test). Seeds are drawn here, after every sampling draw; under
        the study seed convention the predictors instead draw from the random
        state's stand-in for numpy's global state, in the reference's order
        (training-set size by size, factor by factor).
        """
        from joblib import Parallel, delayed, effective_n_jobs
        from threadpoolctl import threadpool_limits

        num_factors = datasets[0][1].shape[1]
        order = [(d, i) for d in range(len(datasets)) for i in range(num_factors)]
        fast_predictor = getattr(type(self), "make_fast_predictor", None)
        fast = bool(getattr(self.config, "fast", False)) and fast_predictor is not None
        # per training set: fast mode's predictor (from its size threshold on), or the study's
        smallest = int(getattr(self.config, "fast_min_train", 0))
        fast_sets = {d: fast and len(datasets[d][0]) >= smallest for d in range(len(datasets))}
        exact_predictor: Callable[[Any], Classifier] = type(self).make_predictor
        stream = global_stream(random_state)
        starts: list[np.random.RandomState] = []
        end: np.random.RandomState | None = None
        if stream is None:
            seeds = random_state.randint(_SEED_BOUND, size=(len(datasets), num_factors))
            randomness: dict[tuple[int, int], Any] = {(d, i): int(seeds[d, i]) for d, i in order}
        else:
            # fast predictors draw as the study's do (none for logistic regression, one per tree for the trees)
            draws = [type(self).predictor_draws(datasets[d][1][:, i]) for d, i in order]
            starts, end = stream_positions(stream, draws)
            randomness = {job: copy_state(start) for job, start in zip(order, starts)}

        def predictor(d: int) -> Callable[[Any], Classifier]:
            return fast_predictor if fast_sets[d] and fast_predictor is not None else exact_predictor

        def fit(d: int, i: int, seed_or_stream: Any) -> tuple[float, float]:
            return fit_and_score(predictor(d), seed_or_stream, *_split(datasets[d], i))

        # Largest training sets first, so the long fits do not end up last on one worker.
        jobs = sorted(order, key=lambda job: -len(datasets[job[0]][0]))
        calls = [(predictor(d), randomness[d, i], *_split(datasets[d], i)) for d, i in jobs]
        # One BLAS/OpenMP thread per fit: these problems are far too small for
        # threaded BLAS, whose idle threads spin and, on a busy machine, cost
        # several times the useful work; the fits themselves run side by side.
        with threadpool_limits(limits=1):
            # Worker processes, not threads: logistic regression's solver loop and scikit-learn's
            # per-stage boosting code hold the GIL, so in threads the fits shared one core.
            if effective_n_jobs(self.config.n_jobs) > 1:
                outputs = Parallel(n_jobs=self.config.n_jobs, backend="loky")(delayed(_fit_one)(*call) for call in calls)
            else:
                outputs = [_fit_one(*call) for call in calls]
            results = {job: (train, test) for job, (train, test, _) in zip(jobs, outputs)}
            if stream is not None:
                assert end is not None
                # a process consumed a copy of its stream: the copy it sends back is where the stream ended
                after_fits = {job: state for job, (_, _, state) in zip(jobs, outputs)}
                ends = starts[1:] + [end]
                if all(same_state(after_fits[job], after) for job, after in zip(order, ends)):
                    stream.set_state(end.get_state())
                else:  # the predictor drew other than assumed: fit in the reference's order instead
                    results = {job: fit(*job, stream) for job in order}
        accuracies = [([0.0] * num_factors, [0.0] * num_factors) for _ in datasets]
        for (d, i), (train_accuracy, test_accuracy) in results.items():
            accuracies[d][0][i] = train_accuracy
            accuracies[d][1][i] = test_accuracy
        return accuracies

    @staticmethod
    def _scores(size: int, train_accuracies: list[float], test_accuracies: list[float]) -> dict[str, float]:
        prefix = f"{size}:"
        scores = {
            prefix + "mean_train_accuracy": float(np.mean(train_accuracies)),
            prefix + "mean_test_accuracy": float(np.mean(test_accuracies)),
            prefix + "min_train_accuracy": float(np.min(train_accuracies)),
            prefix + "min_test_accuracy": float(np.min(test_accuracies)),
        }
        for i, (train_accuracy, test_accuracy) in enumerate(zip(train_accuracies, test_accuracies)):
            scores[prefix + f"train_accuracy_factor_{i}"] = train_accuracy
            scores[prefix + f"test_accuracy_factor_{i}"] = test_accuracy
        return scores

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: RepresentationFunction,
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        check_random_state(random_state)
        config = self.config
        datasets = []
        for size in config.num_train:  # the reference's draw order: train then test, size by size
            codes_train, factors_train = generate_batch_factor_code(
                data, representation_function, size, random_state, config.batch_size
            )
            codes_test, factors_test = generate_batch_factor_code(
                data, representation_function, config.num_test, random_state, config.batch_size
            )
            datasets.append((codes_train, factors_train, codes_test, factors_test))
        scores: dict[str, float] = {}
        for size, (train_accuracies, test_accuracies) in zip(config.num_train, self._fit_all(datasets, random_state)):
            scores.update(self._scores(size, train_accuracies, test_accuracies))
        efficiency = sample_efficiency(scores)
        if efficiency is not None:
            scores["sample_efficiency"] = efficiency
        return scores

    def score_codes(self, codes, factors, codes_test=None, factors_test=None, random_state=None) -> dict[str, float]:
        """The array core (``disentbench.score_codes``): one training set, keys prefixed by its size."""
        if codes_test is None or factors_test is None:
            raise ValueError("downstream tasks need a test split: pass codes_test and factors_test")
        random_state = random_state if random_state is not None else np.random.RandomState(0)
        [(train_accuracies, test_accuracies)] = self._fit_all([(codes, factors, codes_test, factors_test)], random_state)
        return self._scores(len(codes), train_accuracies, test_accuracies)


class LogisticRegressionTask(DownstreamTask):
    name = "downstream_logistic_regression"
    description = "Downstream task: per-factor accuracy of 5-fold cross-validated logistic regression on the codes, at several training-set sizes"

    config_class = LogisticRegressionConfig
    config: LogisticRegressionConfig

    make_predictor = staticmethod(make_logistic_regression_cv)
    make_fast_predictor = staticmethod(make_fast_logistic_regression_cv)
    predictor_draws = staticmethod(lambda labels: 0)


class GradientBoostingTask(DownstreamTask):
    name = "downstream_gradient_boosting"
    description = "Downstream task: per-factor accuracy of gradient-boosted trees (sklearn defaults) on the codes, at several training-set sizes"

    config_class = GradientBoostingConfig
    config: GradientBoostingConfig

    make_predictor = staticmethod(make_gradient_boosting)
    make_fast_predictor = staticmethod(make_fast_gradient_boosting)
    predictor_draws = staticmethod(boosted_tree_draws)


@hookimpl
def register_tasks(register):
    register(LogisticRegressionTask)
    register(GradientBoostingTask)
