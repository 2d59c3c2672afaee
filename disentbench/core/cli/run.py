"""``disentbench run``: train, score and record every run of a study's grid.

The command checks the config and its overrides (``--device``, ``--executor``)
before any work starts, hands the study to the engine (``core.study.run``),
and turns what comes back into the CLI's output: the run table of a dry run,
the score table of a finished study, and one line per failed run. Re-running
the same config resumes, because finished runs are found by their run key.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from disentbench.core.cli._common import EXIT_FAILURE, BadInput, load_study, plugin_registry, term_width


@click.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate and print the run table; train nothing. With a cluster executor (ray, slurm) also its tasks, "
    "GPU-hours and projected wall time.",
)
@click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N).")
@click.option("--tracking-uri", help="Override the MLflow tracking URI.")
@click.option("--executor", help="Override the config's executor (local, multiprocess, ...).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option(
    "--model-steps-per-second",
    type=float,
    default=None,
    help="Dry run: one GPU's packed training throughput for the estimate "
    "(default 8625, the study's conv VAE packed on an H200).",
)
@click.option(
    "--gpus", type=int, multiple=True, help="Dry run: GPU counts to project the wall time for (repeatable; default 1 8 16 32 64 128)."
)
@click.option(
    "--max-runs", type=click.IntRange(min=1), default=None,
    help="Allow a grid of up to N runs (default: the config's max_runs, 100,000).",
)
def run_cmd(config, dry_run, device, tracking_uri, executor, quiet, model_steps_per_second, gpus, max_runs):
    """Run a study: train, score and record every run of the grid in MLflow.

    Finished runs (same run key) are skipped, so re-running resumes a study.

    \b
    Example:
      disentbench run examples/quickstart.yaml
      disentbench run examples/quickstart.yaml --dry-run
      disentbench run study.yaml --device cuda:1 --tracking-uri http://mlflow:5000
      disentbench run study.yaml --executor multiprocess
      disentbench run study.yaml --executor slurm --dry-run --gpus 64
    """
    from disentbench.core.config.grid import expand_grid

    study = load_study(config, max_runs=max_runs)
    if device is not None:
        from disentbench.core.config.schema import TrainingConfig

        try:
            TrainingConfig(device=device)
        except Exception:
            raise BadInput(f"--device {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if executor is not None and executor not in plugin_registry().plugins["executor"]:
        known = ", ".join(plugin_registry().names("executor"))
        raise BadInput(f"--executor {executor!r} is not an executor plugin; known: {known}")
    specs = expand_grid(study, plugin_registry())
    if model_steps_per_second is not None and model_steps_per_second <= 0:
        raise BadInput(f"--model-steps-per-second {model_steps_per_second:g} must be positive")
    if any(n < 1 for n in gpus):
        raise BadInput("--gpus takes GPU counts of 1 or more")
    if dry_run:
        _print_run_table(specs)
        click.echo(f"{len(specs)} runs")
        _print_cluster_plan(study, specs, executor, model_steps_per_second, gpus)
        return

    from disentbench.core.study.run import run_study

    try:
        result = run_study(
            study,
            device=device,
            tracking_uri=tracking_uri,
            config_path=Path(config),
            progress=not quiet,
            executor=executor,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    except RuntimeError as exc:
        click.echo(f"error: {(str(exc).splitlines() or [type(exc).__name__])[0]}", err=True)
        sys.exit(EXIT_FAILURE)
    _print_scores(result)
    if result.failed:
        for outcome in result.failed:  # why, one line each (with -q nothing else says it)
            reason = (outcome.error or "unknown error").splitlines()[0]
            click.echo(f"error: run {outcome.spec.run_name} failed: {reason}", err=True)
        click.echo(f"{len(result.failed)} run(s) failed; see their 'error' tag in MLflow, then re-run to retry.", err=True)
        sys.exit(EXIT_FAILURE)


def _print_cluster_plan(study, specs, executor, model_steps_per_second, gpus) -> None:
    """A cluster executor's tasks and their cost (an executor with ``runs_per_task(config)`` plans tasks)."""
    from disentbench.core.study.plan import (
        DEFAULT_GPU_COUNTS,
        DEFAULT_MODEL_STEPS_PER_SECOND,
        describe_plan,
        plan_tasks,
    )

    ref = study.executor if executor in (None, study.executor.name) else type(study.executor)(name=executor)
    registration = plugin_registry().get("executor", ref.name)
    try:
        executor_obj = registration.factory(registration.make_config(ref.params))
    except Exception as exc:
        raise BadInput(f"executor.params: {str(exc).splitlines()[0]}") from None
    if not hasattr(executor_obj, "runs_per_task"):
        return
    rate = model_steps_per_second or DEFAULT_MODEL_STEPS_PER_SECOND
    plan = plan_tasks(specs, executor_obj.runs_per_task(study), rate)
    for line in describe_plan(plan, ref.name, gpus or DEFAULT_GPU_COUNTS):
        click.echo(line)


def _print_run_table(specs) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("#", "run key", "dataset", "model", "params", "seed", "steps", box=None, pad_edge=False)
    shown = specs if len(specs) <= 200 else specs[:100] + specs[-100:]
    for spec in shown:
        params = " ".join(f"{k}={v}" for k, v in spec.swept.items())
        table.add_row(str(spec.index), spec.run_key, spec.dataset, spec.model, params, str(spec.seed), str(spec.steps))
    Console(width=max(120, term_width())).print(table)
    if len(shown) < len(specs):
        click.echo(f"(showing the first and last 100 of {len(specs)} runs)")
    # Steps per model at a glance (a model entry may set its own, e.g. study_v1's FactorVAE).
    totals: dict[tuple[str, int, int], int] = {}
    for spec in specs:
        totals[spec.model, spec.steps, spec.batch_size] = totals.get((spec.model, spec.steps, spec.batch_size), 0) + 1
    for (model, steps, batch_size), count in totals.items():
        click.echo(f"{model}: {count} runs x {steps:,} steps at batch {batch_size}")


def _print_scores(result) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = result.headline_keys
    several_reps = len(result.config.evaluation.representations) > 1

    def header(key: str) -> str:
        # as `compare` labels them: a metric with several headline keys shows which one (code_std:mean_std)
        _, representation, name, sub = key.split("/", 3)
        siblings = {c.split("/", 3)[3] for c in columns if c.split("/", 3)[2] == name}
        label = f"{name}:{sub}" if len(siblings) > 1 else name
        return f"{label} ({representation})" if several_reps else label

    table = Table(title=f"study {result.config.name}", box=None, pad_edge=False)
    for name in ("model", "params", "dataset", "seed", "status"):
        table.add_column(name, no_wrap=True)
    for key in columns:
        table.add_column(header(key), justify="right")
    for outcome in result.outcomes:
        spec = outcome.spec
        params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.swept.items())
        values = [f"{outcome.scores[c]:.3f}" if c in outcome.scores else "-" for c in columns]
        # "skipped (done)" (finished earlier) vs "skipped (owned by HOST:PID)" (another process trains it)
        status = f"skipped ({outcome.error or 'done'})" if outcome.status == "skipped" else outcome.status
        table.add_row(spec.model, params, spec.dataset, str(spec.seed), status, *values)
    Console(width=max(120, term_width())).print(table)
    click.echo(f"Results are in MLflow ({result.tracking_uri}), experiment '{result.config.experiment_name}'.")
    click.echo(f"Open the MLflow UI: disentbench ui --tracking-uri {result.tracking_uri}")
