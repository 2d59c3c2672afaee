"""Evaluation: a trained model's mean and sampled representations, scored by metric and task plugins.

Every metric sees a ``representation_function(observations) -> codes`` on
numpy arrays and a ``numpy.random.RandomState``. The random state depends only
on the evaluation seed and the metric's name, so every run of a study is
scored on the same data draws, as in the study. Unlike the study (which drew
one seed per representation x metric), the mean and the sampled
representation of a model are scored on the same draws too, so their scores
are a paired comparison. The sampled representation's noise is seeded as
well (the study's was not), from the evaluation seed and the metric's name,
so a metric's score does not depend on which other metrics ran before it: a
metric rerun alone reproduces its in-study value.

Seed conventions (``evaluation.seed_convention``), which random state each
(representation, metric) gets:

* ``per_metric`` (the default): ``RandomState(metric_seed(seed, name))``, as
  above: mean and sampled scores are paired, and a metric's draws do not
  depend on which metrics a study lists.
* ``study``: the 2019 study's pipeline (``dlib_reproduce``): one master
  ``RandomState(seed)`` (the study: 0) gives two draws for the postprocessing
  steps (mean, sampled) and then one seed per representation (mean, then
  sampled) and study metric config, in the sorted order of the config files
  (:data:`STUDY_METRIC_CONFIGS`); a metric gets ``RandomState`` of its seed.
  Where the study code left an estimator unseeded (numpy's global state, for
  gradient-boosted trees), the metric's own seed stands in for the global
  state (see :class:`~disentbench.core.evaluation.sampling.StudyRandomState`).
  The same codes then give the study code's numbers bit for bit. A scorer the
  study did not have gets its ``per_metric`` seed.
* ``fixed``: every metric gets ``RandomState(seed)`` itself, as the study's
  metric configs say when evaluated one by one (``evaluation.random_seed = 0``
  in each ``.gin`` file, which ``dlib_reproduce`` overrides), with the same
  stand-in for the global state.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from disentbench.core.contracts import Model
from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.evaluation.sampling import StudyRandomState

RepresentationFn = Callable[[np.ndarray], np.ndarray]


def metric_seed(evaluation_seed: int, plugin_name: str) -> int:
    """Deterministic per-(seed, plugin) seed for numpy.random.RandomState (< 2**32)."""
    return (evaluation_seed * 1_000_003 + zlib.crc32(plugin_name.encode())) % (2**32)


SeedConvention = Literal["per_metric", "study", "fixed"]

#: The study's metric config files (``unsupervised_study_v1/metric_configs/*.gin``) in the order
#: ``dlib_reproduce`` seeds them (sorted by file name), each with the disentbench scorer it configures.
STUDY_METRIC_CONFIGS: tuple[tuple[str, str], ...] = (
    ("beta_vae_sklearn", "beta_vae_score"),
    ("dci", "dci"),
    ("downstream_task_boosted_trees", "downstream_gradient_boosting"),
    ("downstream_task_logistic_regression", "downstream_logistic_regression"),
    ("factor_vae_metric", "factor_vae_score"),
    ("mig", "mig"),
    ("modularity_explicitness", "modularity_explicitness"),
    ("sap_score", "sap"),
    ("unsupervised", "unsupervised"),
)
#: The study's postprocessing configs, sorted as ``dlib_reproduce`` seeds and evaluates them.
STUDY_REPRESENTATIONS = ("mean", "sampled")


def study_seeds(evaluation_seed: int = 0) -> dict[tuple[str, str], int]:
    """``{(representation, scorer name): seed}`` exactly as the study pipeline draws them from ``evaluation_seed``."""
    master = np.random.RandomState(evaluation_seed)
    for _ in STUDY_REPRESENTATIONS:  # one draw per postprocessing config, before any metric
        master.randint(2**32)
    seeds = {}
    for representation in STUDY_REPRESENTATIONS:
        for _, scorer in STUDY_METRIC_CONFIGS:
            seeds[representation, scorer] = int(master.randint(2**32))
    return seeds


def metric_random_state(
    convention: SeedConvention, evaluation_seed: int, representation: str, name: str
) -> np.random.RandomState:
    """The random state scorer ``name`` gets on ``representation`` under a seed convention (module docstring)."""
    if convention == "per_metric":
        return np.random.RandomState(metric_seed(evaluation_seed, name))
    if convention == "fixed":
        return StudyRandomState(evaluation_seed)
    if convention == "study":
        seed = study_seeds(evaluation_seed).get((representation, name))
        return StudyRandomState(seed if seed is not None else metric_seed(evaluation_seed, name))
    raise ValueError(f"unknown seed convention {convention!r}; use per_metric, study or fixed")


def representation_function(
    model: Model, representation: str, device: torch.device, batch_size: int = 256, seed: int = 0
) -> RepresentationFn:
    """numpy float observations (n, C, H, W) -> numpy codes (n, d), on ``device`` in batches."""
    if representation not in ("mean", "sampled"):
        raise ValueError(f"unknown representation {representation!r}; use 'mean' or 'sampled'")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    @torch.no_grad()
    def encode(observations: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(observations), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(observations[start : start + batch_size], dtype=np.float32))
            mean, logvar = model.encode(x.to(device))
            if representation == "sampled":
                mean = model.sample_latent(mean, logvar, generator)
            outputs.append(mean.float().cpu().numpy())
        if not outputs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outputs)

    return encode


def score_prefix(kind: str, representation: str, name: str) -> str:
    """The start of every key ``evaluate`` records for one scorer: ``eval|downstream/REPRESENTATION/NAME/``."""
    return f"{'eval' if kind == 'metric' else 'downstream'}/{representation}/{name}/"


def evaluate(
    model: Model,
    data: GroundTruthData,
    scorers: list[tuple[str, str, Callable]],
    representations: Sequence[str],
    *,
    device: torch.device,
    evaluation_seed: int,
    batch_size: int = 256,
    on_score: Callable[[str, str, str, dict[str, float], float], None] | None = None,
    seed_convention: SeedConvention = "per_metric",
    workers: int = 1,
) -> dict[str, float]:
    """Score ``model`` with each ``(kind, name, scorer)``; returns flat ``{prefix/name/key: value}``.

    Metric scores are named ``eval/<representation>/<metric>/<key>`` and task
    scores ``downstream/<representation>/<task>/<key>``. Each (representation,
    scorer) pair is one independent job (its own random state and noise
    stream), so ``workers`` > 1 runs them side by side in threads with the same
    scores as in sequence; BLAS and OpenMP are then held to one thread each, so
    the jobs do not oversubscribe the cores. ``on_score(representation, kind,
    name, scores, seconds)`` is called as each job finishes, in job order. A
    scorer that raises fails the whole evaluation (after the running jobs end),
    naming the scorer and representation.
    """
    model.eval()
    jobs = [(representation, kind, name, scorer) for representation in representations for kind, name, scorer in scorers]

    def run(job) -> tuple[dict[str, float], float]:
        representation, kind, name, scorer = job
        started = time.perf_counter()
        # A fresh noise stream per metric: its sampled codes do not depend on the metrics before it.
        rep_fn = representation_function(
            model, representation, device, batch_size=batch_size, seed=metric_seed(evaluation_seed, f"sampled/{name}")
        )
        random_state = metric_random_state(seed_convention, evaluation_seed, representation, name)
        try:
            scores = scorer(data, rep_fn, random_state)
        except Exception as exc:
            raise ScorerError(f"{kind} {name!r} on the {representation} representation failed: {type(exc).__name__}: {exc}") from exc
        return scores, time.perf_counter() - started

    results: dict[str, float] = {}

    def record(job, scores: dict[str, float], seconds: float) -> None:
        representation, kind, name, _ = job
        prefix = score_prefix(kind, representation, name)
        for key, value in scores.items():
            results[prefix + key] = float(value)
        if on_score:
            on_score(representation, kind, name, scores, seconds)

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            record(job, *run(job))
        return results

    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        for job, future in zip(jobs, futures):
            record(job, *future.result())
    return results


class ScorerError(RuntimeError):
    """A metric or task raised while scoring a model; the message names it and the representation."""
