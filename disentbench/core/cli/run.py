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
@click.option("--dry-run", is_flag=True, help="Validate and print the run table; train nothing.")
@click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N).")
@click.option("--tracking-uri", help="Override the MLflow tracking URI.")
@click.option("--executor", help="Override the config's executor (local, multiprocess, ...).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def run_cmd(config, dry_run, device, tracking_uri, executor, quiet):
    """Run a study: train, score and record every run of the grid in MLflow.

    Finished runs (same run key) are skipped, so re-running resumes a study.

    \b
    Example:
      disentbench run examples/quickstart.yaml
      disentbench run examples/quickstart.yaml --dry-run
      disentbench run study.yaml --device cuda:1 --tracking-uri http://mlflow:5000
      disentbench run study.yaml --executor multiprocess
    """
    from disentbench.core.config.grid import expand_grid

    study = load_study(config)
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
    if dry_run:
        _print_run_table(specs)
        click.echo(f"{len(specs)} runs")
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
