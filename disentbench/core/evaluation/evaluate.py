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
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from disentbench.core.contracts import Model
from disentbench.core.data.ground_truth import GroundTruthData

RepresentationFn = Callable[[np.ndarray], np.ndarray]


def metric_seed(evaluation_seed: int, plugin_name: str) -> int:
    """Deterministic per-(seed, plugin) seed for numpy.random.RandomState (< 2**32)."""
    return (evaluation_seed * 1_000_003 + zlib.crc32(plugin_name.encode())) % (2**32)


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
    on_score: Callable[[str, str, str, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Score ``model`` with each ``(kind, name, scorer)``; returns flat ``{prefix/name/key: value}``.

    Metric scores are named ``eval/<representation>/<metric>/<key>`` and task
    scores ``downstream/<representation>/<task>/<key>``.
    """
    model.eval()
    results: dict[str, float] = {}
    for representation in representations:
        for kind, name, scorer in scorers:
            # A fresh noise stream per metric: its sampled codes do not depend on the metrics before it.
            rep_fn = representation_function(
                model, representation, device, batch_size=batch_size, seed=metric_seed(evaluation_seed, f"sampled/{name}")
            )
            random_state = np.random.RandomState(metric_seed(evaluation_seed, name))
            scores = scorer(data, rep_fn, random_state)
            prefix = score_prefix(kind, representation, name)
            for key, value in scores.items():
                results[prefix + key] = float(value)
            if on_score:
                on_score(representation, kind, name, scores)
    return results
