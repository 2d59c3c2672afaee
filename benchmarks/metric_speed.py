"""Time the study's metric suite on one representation of a fixed synthetic dataset.

Every registered metric and task runs with its study defaults (``--quick``:
sample sizes divided by 10, downstream training sizes up to 1000), with the
random state the evaluation would give it (``metric_seed(0, name)``). The
dataset has dSprites' five factor sizes (3, 6, 40, 32, 32) and 4x4 images whose
first five pixels hold the factor values; the representation is a fixed random
linear map of the pixels to 10 dimensions plus Gaussian noise, so encoding is
almost free and the timings are those of the metrics' own sampling and
estimators. Metrics of the study that are not registered (yet) are listed and
skipped.

    python benchmarks/metric_speed.py [--quick] [--json PATH] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone

import numpy as np

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.evaluation.evaluate import metric_seed
from disentbench.core.registry import build_registry

#: The study's suite in the order the study runs it (names as disentbench registers them).
STUDY_SUITE = [
    "beta_vae_score",
    "factor_vae_score",
    "mig",
    "dci",
    "sap",
    "modularity_explicitness",
    "unsupervised",
    "downstream_logistic_regression",
    "downstream_gradient_boosting",
]
#: Other names the same scores may be registered under.
ALIASES = {
    "sap": ["sap_score"],
    "modularity_explicitness": ["modularity"],
    "unsupervised": ["unsupervised_scores", "unsupervised_metrics"],
}
#: Config fields that are sample sizes (scaled down by --quick).
QUICK_DIVISOR = 10
QUICK_MAX_TRAIN_SIZE = 1000


class SyntheticShapes(GroundTruthData):
    """dSprites' factor sizes without its constant colour factor; pixel i (< 5) = factor i scaled to 0..255."""

    name = "synthetic_shapes"
    factor_names = ("shape", "scale", "orientation", "position_x", "position_y")
    factor_sizes = (3, 6, 40, 32, 32)

    def __init__(self):
        factors = self.factors_of(np.arange(self.num_observations))
        sizes = np.asarray(self.factor_sizes)
        images = np.zeros((self.num_observations, 1, 4, 4), dtype=np.uint8)
        images.reshape(self.num_observations, 16)[:, :5] = np.round(255 * factors / (sizes - 1))
        self._images = images

    @property
    def images(self) -> np.ndarray:
        return self._images


def linear_representation(num_latent: int = 10, noise: float = 0.05, seed: int = 0):
    """Fixed random linear codes of the pixels plus Gaussian noise (a stand-in encoder)."""
    weights = np.random.RandomState(seed).randn(16, num_latent).astype(np.float32)
    generator = np.random.default_rng(seed)

    def represent(observations: np.ndarray) -> np.ndarray:
        codes = observations.reshape(len(observations), -1) @ weights
        return codes + noise * generator.standard_normal(codes.shape, dtype=np.float32)

    return represent


def quick_params(config_class) -> dict:
    """Sample-size fields of a plugin config scaled down; everything else at its default."""
    params = {}
    for name, field in config_class.model_fields.items():
        default = field.default
        if not name.startswith("num_") or name in ("num_bins", "num_latent"):
            continue
        if isinstance(default, bool):
            continue
        if isinstance(default, int) and default >= 100:
            params[name] = max(default // QUICK_DIVISOR, 10)
        elif isinstance(default, (list, tuple)) and default and all(isinstance(v, int) for v in default):
            params[name] = [v for v in default if v <= QUICK_MAX_TRAIN_SIZE] or [min(default)]
    return params


def suite(registry, only: list[str] | None):
    """[(study name, kind, registered name or None)] for the study suite, then any other registered scorer."""
    registered = {name: kind for kind in ("metric", "task") for name in registry.names(kind)}
    entries, seen = [], set()
    for name in STUDY_SUITE:
        found = next((n for n in [name, *ALIASES.get(name, [])] if n in registered), None)
        entries.append((name, registered.get(found), found))
        seen.add(found)
    entries += [(name, kind, name) for name, kind in sorted(registered.items()) if name not in seen]
    if only:
        entries = [e for e in entries if e[0] in only or e[2] in only]
    return entries


def machine() -> dict:
    import sklearn
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "torch": torch.__version__,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sample sizes / 10 and downstream sizes up to 1000")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="time only these metrics/tasks")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    args = parser.parse_args(argv)

    # Import the estimators' libraries up front, so the first metric to use
    # scikit-learn is not charged its import (several seconds on a cold cache).
    started = time.perf_counter()
    import scipy.stats  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.preprocessing  # noqa: F401
    import sklearn.svm  # noqa: F401

    registry = build_registry(load_entry_points=False)
    data = SyntheticShapes()
    setup_seconds = time.perf_counter() - started
    represent = linear_representation()
    results, missing = [], []
    mode = "quick" if args.quick else "study defaults"
    print(f"metric suite on {data.name} {data.factor_sizes}, 10-dim linear+noise representation, {mode}")
    print(f"(setup: imports, plugin registry, dataset: {setup_seconds:.1f} s, not counted)")
    print(f"{'metric/task':34s} {'wall s':>9s} {'cpu s':>9s}  headline")
    total_wall = total_cpu = 0.0
    for study_name, kind, name in suite(registry, args.only):
        if name is None:
            missing.append(study_name)
            print(f"{study_name:34s} {'-':>9s} {'-':>9s}  not registered, skipped")
            continue
        registration = registry.get(kind, name)
        params = quick_params(registration.config) if args.quick else {}
        scorer = registration.factory(registration.make_config(params))
        random_state = np.random.RandomState(metric_seed(args.seed, name))
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            scores, error = scorer(data, represent, random_state), None
        except Exception as exc:  # one broken scorer must not hide the others' timings
            scores, error = {}, f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        total_wall += wall
        total_cpu += cpu
        headline_keys = getattr(scorer, "headline", None) or sorted(scores)[:1]
        headline = ", ".join(f"{k}={scores[k]:.4f}" for k in headline_keys if k in scores) or error
        print(f"{name:34s} {wall:9.2f} {cpu:9.2f}  {headline}", flush=True)
        results.append(
            {
                "name": name,
                "kind": kind,
                "params": params,
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "scores": {k: float(v) for k, v in scores.items()},
                "error": error,
            }
        )
    print(f"{'total':34s} {total_wall:9.2f} {total_cpu:9.2f}")
    if missing:
        print(f"not registered: {', '.join(missing)}")
    if args.json:
        report = {
            "benchmark": "metric_speed",
            "quick": args.quick,
            "seed": args.seed,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "dataset": {"name": data.name, "factor_sizes": list(data.factor_sizes)},
            "results": results,
            "missing": missing,
            "total_wall_seconds": total_wall,
            "total_cpu_seconds": total_cpu,
            "setup_seconds": setup_seconds,
        }
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
