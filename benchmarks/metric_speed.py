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
    python benchmarks/metric_speed.py --against-reference [--quick] [--repeats N] [--json PATH]

``--against-reference`` (needs disentanglement_lib 1.5 with gin-config 0.4.0,
as the parity tests install it) times, per study metric config, the study's own
code (configured by the study's ``.gin`` file, ``RandomState(seed)`` after
``np.random.seed(seed)``) against disentbench's exact mode (study seed
convention) and fast mode on the same inputs, alternating, medians over
``--repeats``; then the whole suite for one model (both representations): the
study code's sequential evaluation against disentbench's ``evaluate()`` with its
threads, in exact and in fast mode. The representation is deterministic here
(noise is a fixed function of the pixels), so both sides see the same codes.
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
from disentbench.core.evaluation.boosting import builder_name
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
        "tree_builder": builder_name(),
    }


# -- against the study's own code ---------------------------------------------------------------------------

#: study metric config (unsupervised_study_v1/metric_configs/NAME.gin) -> disentbench scorer, in the study's order
STUDY_CONFIGS = {
    "beta_vae_sklearn": "beta_vae_score",
    "dci": "dci",
    "downstream_task_boosted_trees": "downstream_gradient_boosting",
    "downstream_task_logistic_regression": "downstream_logistic_regression",
    "factor_vae_metric": "factor_vae_score",
    "mig": "mig",
    "modularity_explicitness": "modularity_explicitness",
    "sap_score": "sap",
    "unsupervised": "unsupervised",
}


def deterministic_representation(num_latent: int = 10, seed: int = 0):
    """Fixed random linear codes of the pixels plus a fixed nonlinear 'noise' of them: same input, same code."""
    weights = np.random.RandomState(seed).randn(16, num_latent).astype(np.float64)
    mixing = np.random.RandomState(seed + 1).randn(16, num_latent).astype(np.float64)

    def represent(observations: np.ndarray) -> np.ndarray:
        pixels = observations.reshape(len(observations), -1).astype(np.float64)
        return pixels @ weights + 0.3 * np.sin(40.0 * (pixels @ mixing))

    return represent


def reference_functions():
    """{study config: the study code's metric function}, or a one-line reason it cannot be used."""
    import importlib
    import importlib.metadata
    import types

    pins = {"disentanglement-lib": "1.5", "gin-config": "0.4.0"}
    for dist, pin in pins.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return f"{dist} is not installed (pip install --no-deps disentanglement-lib==1.5 gin-config==0.4.0 absl-py six)"
        if version != pin:
            return f"{dist} {version} is installed; the reference needs {dist}=={pin}"
    try:
        importlib.import_module("gin.tf")
    except Exception:  # TensorFlow is absent: the metric modules import gin.tf only for its side effects
        sys.modules["gin.tf"] = types.ModuleType("gin.tf")
    from disentanglement_lib.evaluation.metrics import (
        beta_vae,
        dci,
        downstream_task,
        factor_vae,
        mig,
        modularity_explicitness,
        sap_score,
        unsupervised_metrics,
    )

    return {
        "beta_vae_sklearn": beta_vae.compute_beta_vae_sklearn,
        "dci": dci.compute_dci,
        "downstream_task_boosted_trees": downstream_task.compute_downstream_task,
        "downstream_task_logistic_regression": downstream_task.compute_downstream_task,
        "factor_vae_metric": factor_vae.compute_factor_vae,
        "mig": mig.compute_mig,
        "modularity_explicitness": modularity_explicitness.compute_modularity_explicitness,
        "sap_score": sap_score.compute_sap,
        "unsupervised": unsupervised_metrics.unsupervised_metrics,
    }


def study_bindings(config_name: str, quick: bool) -> tuple[list[str], list[str], dict]:
    """The study config's gin bindings for sizes (scaled down with ``quick``) and disentbench's matching params."""
    import ast

    import disentanglement_lib

    path = os.path.join(os.path.dirname(disentanglement_lib.__file__), "config", "unsupervised_study_v1", "metric_configs", f"{config_name}.gin")
    bindings, params = [], {}
    for line in open(path).read().splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        selector, _, param = key.rpartition(".")
        if selector in ("evaluation", "dataset") or value.startswith("@"):
            continue
        literal = ast.literal_eval(value)
        if quick and param.startswith("num_") and param != "num_bins":
            if isinstance(literal, list):
                literal = [v for v in literal if v <= QUICK_MAX_TRAIN_SIZE]
            else:
                literal = max(literal // QUICK_DIVISOR, 10)
        bindings.append(f"{key} = {literal!r}")
        params["prune_threshold" if param == "threshold" else param] = literal
    return [path], bindings, params


def run_reference(function, config_name, data, represent, seed, quick):
    import gin

    files, bindings, _ = study_bindings(config_name, quick)
    gin.clear_config()
    # finalize_config=False: gin 0.4's finalize hooks use collections.Mapping, gone since Python 3.10
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False, skip_unknown=True)
    try:
        np.random.seed(seed)  # what its unseeded boosted trees draw from, made reproducible
        return function(data, represent, np.random.RandomState(seed))
    finally:
        gin.clear_config()


class _Encoder:
    """``represent`` as a model for ``evaluate()``: mean = the code, no spread (the sampled code equals it)."""

    def __init__(self, represent):
        self.represent = represent

    def eval(self):
        return self

    def encode(self, x):
        import torch

        codes = torch.from_numpy(self.represent(x.cpu().numpy())).float()
        return codes, torch.full_like(codes, -float("inf"))

    def sample_latent(self, mean, logvar, generator):
        return mean


def against_reference(args) -> int:
    import statistics
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    # the study's estimators warn on these codes (both sides alike); thousands of lines would bury the table
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")

    functions = reference_functions()
    if isinstance(functions, str):
        print(f"error: --against-reference needs the study's code: {functions}", file=sys.stderr)
        return 2
    import torch

    from disentbench import score_representation
    from disentbench.core.evaluation.evaluate import evaluate, study_seeds

    registry = build_registry(load_entry_points=False)
    data, represent = SyntheticShapes(), deterministic_representation()
    seeds = study_seeds(args.seed)
    sizes = "quick (sizes / 10, downstream up to 1000)" if args.quick else "the study's sizes"
    print(f"study code vs disentbench on {data.name} {data.factor_sizes}, {sizes}, {args.repeats} repeat(s), medians")
    print(f"disentbench's boosted trees: {builder_name()} (DISENTBENCH_PRESORTED_TREES=0: scikit-learn's builder)")
    print(f"{'metric config':38s} {'study s':>8s} {'exact s':>8s} {'ratio':>6s} {'fast s':>8s} {'ratio':>6s} {'exact diff':>11s} {'fast diff':>10s} {'(summaries)':>11s}")
    rows, scorers = [], {}
    for config_name, name in STUDY_CONFIGS.items():
        if args.only and name not in args.only and config_name not in args.only:
            continue
        _, _, params = study_bindings(config_name, args.quick)
        kind = "task" if name.startswith("downstream") else "metric"
        registration = registry.get(kind, name)
        scorers[name] = (kind, params)
        seed = seeds["mean", name]
        times = {"study": [], "exact": [], "fast": []}
        scores = {}
        fast_params = {**params, "fast": True} if "fast" in registration.config.model_fields else params
        for _ in range(args.repeats):  # alternate the sides, so a change of machine load hits all of them
            for side in ("study", "exact", "fast"):
                started = time.perf_counter()
                if side == "study":
                    out = run_reference(functions[config_name], config_name, data, represent, seed, args.quick)
                else:
                    out = score_representation(
                        name, data, represent, seed=seed, study_convention=True, registry=registry,
                        **(fast_params if side == "fast" else params),
                    )  # fmt: skip
                times[side].append(time.perf_counter() - started)
                scores[side] = {k: float(np.real(v)) for k, v in out.items()}
        median = {side: statistics.median(values) for side, values in times.items()}
        exact_diff = max(abs(scores["exact"][k] - v) for k, v in scores["study"].items())
        headline = getattr(registration.factory(registration.make_config(params)), "headline", None) or sorted(scores["exact"])
        fast_diff = max(abs(scores["fast"][k] - scores["exact"][k]) for k in headline)
        # every score but the per-factor ones (DCI's informativeness and completeness, the tasks' means and minima)
        summaries = [k for k in scores["exact"] if "factor" not in k] or list(scores["exact"])
        fast_summary_diff = max(abs(scores["fast"][k] - scores["exact"][k]) for k in summaries)
        print(
            f"{config_name:38s} {median['study']:8.2f} {median['exact']:8.2f} {median['study'] / median['exact']:6.1f} "
            f"{median['fast']:8.2f} {median['study'] / median['fast']:6.1f} {exact_diff:11.1e} {fast_diff:10.4f} {fast_summary_diff:11.4f}",
            flush=True,
        )
        rows.append({"config": config_name, "scorer": name, "seconds": median, "exact_max_difference": exact_diff,
                     "fast_headline_max_difference": fast_diff, "fast_summary_max_difference": fast_summary_diff,
                     "headline": list(headline)})  # fmt: skip

    # The whole suite for one model, both representations: the study code evaluates sequentially.
    study_suite = 2 * sum(row["seconds"]["study"] for row in rows)
    suite_times: dict[str, list[float]] = {"exact": [], "fast": []}
    for _ in range(args.repeats):  # alternating, as the per-metric rows
        for mode in ("exact", "fast"):
            built = []
            for name, (kind, params) in scorers.items():
                registration = registry.get(kind, name)
                extra = {"fast": True} if mode == "fast" and "fast" in registration.config.model_fields else {}
                built.append((kind, name, registration.factory(registration.make_config({**params, **extra}))))
            started = time.perf_counter()
            evaluate(
                _Encoder(represent), data, built, ["mean", "sampled"], device=torch.device("cpu"),
                evaluation_seed=args.seed, seed_convention="study", workers=max(1, min(8, os.cpu_count() or 1)),
            )  # fmt: skip
            suite_times[mode].append(time.perf_counter() - started)
    suite = {mode: statistics.median(values) for mode, values in suite_times.items()}
    print(f"{'whole suite, mean + sampled':38s} {study_suite:8.2f} {suite['exact']:8.2f} {study_suite / suite['exact']:6.1f} "
          f"{suite['fast']:8.2f} {study_suite / suite['fast']:6.1f}")  # fmt: skip
    print(f"(study suite = twice the study code's per-metric medians, run in sequence as it does; disentbench: evaluate() "
          f"with {max(1, min(8, os.cpu_count() or 1))} threads on {os.cpu_count()} cores, median of {args.repeats})")  # fmt: skip
    if args.json:
        report = {"benchmark": "metric_speed --against-reference", "quick": args.quick, "repeats": args.repeats,
                  "machine": machine(), "results": rows, "suite_seconds": {"study": study_suite, **suite},
                  "suite_seconds_each": suite_times}  # fmt: skip
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sample sizes / 10 and downstream sizes up to 1000")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="time only these metrics/tasks")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    parser.add_argument("--against-reference", action="store_true", help="time the study's own code side by side (see above)")
    parser.add_argument("--repeats", type=int, default=1, help="with --against-reference: timings per side, medians (default 1)")
    args = parser.parse_args(argv)
    if args.against_reference:
        return against_reference(args)

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
