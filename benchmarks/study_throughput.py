"""Study throughput: evaluation in this process after each pack vs an evaluation pool beside training.

One small study (beta-VAE runs in packs, the procedural dSprites) runs twice in
one invocation of this script, into a temporary SQLite store, on the same
device: (a) the ``local`` executor evaluating each run in this process right
after its pack trained (the GPU idles while the CPU scores), (b) the same
executor with ``evaluation_processes: N``, so trained runs are scored by N
processes while the next pack trains. Both give the same scores (checked).

Printed per variant: wall seconds, training runs finished per hour (runs over
the summed wall time of the packs' training: each run's ``train/seconds``
over its pack size), evaluations per hour (runs over the summed
``evaluation/seconds``, divided by the evaluating processes), and the study's
wall-clock runs per hour; the last line gives the ratio (a)/(b) of wall times.
The study is training-bound when (b)'s wall time is close to its training time.

    python benchmarks/study_throughput.py --quick                     # CPU, ~2 min on 2 cores
    python benchmarks/study_throughput.py --device cuda --runs 64 --pack-size 16 --steps 2000 --processes 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SUITES = {
    "light": [
        {"name": "mig", "params": {"num_train": 1000}},
        {"name": "sap", "params": {"num_train": 1000, "num_test": 500}},
    ],
    "study_quick": [
        {"name": "beta_vae_score", "params": {"num_train": 1000, "num_eval": 500}},
        {"name": "factor_vae_score", "params": {"num_train": 1000, "num_eval": 500, "num_variance_estimate": 1000}},
        {"name": "mig", "params": {"num_train": 1000}},
        {"name": "dci", "params": {"num_train": 1000, "num_test": 500}},
        {"name": "sap", "params": {"num_train": 1000, "num_test": 500}},
        {"name": "modularity_explicitness", "params": {"num_train": 1000, "num_test": 500}},
        {"name": "unsupervised", "params": {"num_train": 1000}},
    ],
}


def _config(folder: Path, name: str, args, executor: dict) -> dict:
    betas = [1.0, 2.0, 4.0, 6.0, 8.0, 16.0][: max(1, min(6, args.runs))]
    seeds = max(1, args.runs // len(betas))  # runs rounded down to a multiple of the swept values
    return {
        "name": name,
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": betas}}],
        "seeds": seeds,
        "training": {
            "steps": args.steps, "batch_size": 64, "log_every": max(args.steps // 4, 1), "checkpoint_every": 10**9,
            "device": args.device, "pack_size": args.pack_size, "checkpoint_dir": str(folder / f"ck_{name}"),
        },
        "evaluation": {"metrics": SUITES[args.suite], "representations": ["mean", "sampled"]},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        "executor": executor,
    }  # fmt: skip


def _measure(folder: Path, name: str, args, executor: dict) -> dict:
    from mlflow.tracking import MlflowClient

    from disentbench.core.config.load import load_study_config
    from disentbench.core.registry import build_registry
    from disentbench.core.study.run import run_study

    registry = build_registry()
    raw = _config(folder, name, args, executor)
    config = load_study_config(raw, registry)
    started = time.perf_counter()
    result = run_study(config, registry=registry, progress=not args.no_progress)
    wall = time.perf_counter() - started
    bad = [o for o in result.outcomes if o.status != "finished"]
    if bad:
        raise SystemExit(f"{name}: {len(bad)} runs did not finish: {bad[0].error}")
    client = MlflowClient(tracking_uri=raw["tracking"]["uri"])
    runs = {o.run_id: client.get_run(o.run_id).data for o in result.outcomes}
    # the runs of a pack share its training time: each contributes its share
    training = sum(d.metrics["train/seconds"] / int(d.tags.get("pack_size", "1")) for d in runs.values())
    evaluation = sum(data.metrics["evaluation/seconds"] for data in runs.values())
    evaluators = executor.get("params", {}).get("evaluation_processes", 0) or 1
    n = len(runs)
    return {
        "variant": name, "runs": n, "wall_seconds": wall, "training_seconds": training,
        "evaluation_seconds": evaluation, "training_runs_per_hour": n / training * 3600,
        "evaluations_per_hour": n / (evaluation / evaluators) * 3600, "study_runs_per_hour": n / wall * 3600,
        "scores": {o.spec.run_key: o.scores for o in result.outcomes},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--pack-size", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--processes", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--suite", choices=sorted(SUITES), default="study_quick")
    parser.add_argument("--quick", action="store_true", help="12 runs in packs of 6, 100 steps, the light suite")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.pack_size, args.steps, args.suite = 12, 6, 100, "light"
    with tempfile.TemporaryDirectory(prefix="disentbench-throughput-") as tmp:
        folder = Path(tmp)
        cwd = os.getcwd()
        os.chdir(folder)  # a SQLite store keeps its artifacts in ./mlruns
        try:
            inline = _measure(folder, "inline", args, {"name": "local"})
            pool = _measure(folder, "pool", args, {"name": "local", "params": {"evaluation_processes": args.processes}})
        finally:
            os.chdir(cwd)
    same = inline["scores"] == pool["scores"]
    print(f"\n{inline['runs']} runs, packs of {args.pack_size}, {args.steps} steps, suite {args.suite}, "
          f"device {args.device}, {os.cpu_count()} CPUs, {args.processes} evaluation processes")  # fmt: skip
    header = f"{'variant':<8} {'wall s':>8} {'train s':>8} {'eval s':>8} {'train runs/h':>13} {'evals/h':>9} {'study runs/h':>13}"
    print(header)
    for row in (inline, pool):
        print(f"{row['variant']:<8} {row['wall_seconds']:8.1f} {row['training_seconds']:8.1f} "
              f"{row['evaluation_seconds']:8.1f} {row['training_runs_per_hour']:13.0f} "
              f"{row['evaluations_per_hour']:9.0f} {row['study_runs_per_hour']:13.0f}")  # fmt: skip
    print(f"wall inline / pool: {inline['wall_seconds'] / pool['wall_seconds']:.2f}x; "
          f"pool wall / its training time: {pool['wall_seconds'] / pool['training_seconds']:.2f}; "
          f"scores identical: {same}")  # fmt: skip
    if args.json:
        for row in (inline, pool):
            row.pop("scores")
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "inline": inline,
                                         "pool": pool, "scores_identical": same}, indent=2))  # fmt: skip
    if not same:
        raise SystemExit("the evaluation pool gave other scores than in-process evaluation")


if __name__ == "__main__":
    main()
