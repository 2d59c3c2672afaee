"""The ``disentbench`` command line.

Exit codes: 0 success, 1 a run or command failed, 2 bad input (config, arguments,
missing data). Every bad-input message is one line per problem, naming the
offending field or file and what to do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click

EXIT_FAILURE, EXIT_BAD_INPUT = 1, 2


class BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def _registry():
    from disentbench.core.plugins import get_plugin_manager

    registry = get_plugin_manager()
    if not getattr(registry, "_problems_shown", False):
        for problem in registry.problems:  # once per process, on stderr
            click.echo(f"problem: {problem}", err=True)
        registry._problems_shown = True
    return registry


def _load(config_path: str):
    from disentbench.core.config import ConfigError, load_study_config

    try:
        return load_study_config(config_path, _registry())
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {config_path}; nothing was run.", err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="disentbench")
def main():
    """disentbench: train, score and analyse disentanglement studies.

    \b
    Example:
      disentbench plugins
      disentbench run examples/quickstart.yaml
      disentbench ui
    """
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # MLflow probes git; silence its warning


# ---------------------------------------------------------------------------
# plugins


@main.group("plugins", invoke_without_command=True)
@click.option("--kind", type=click.Choice(["model", "dataset", "metric", "task", "executor", "analysis"]), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins_cmd(ctx, kind, as_json):
    """List every plugin: kind, name, source package and description.

    \b
    Example:
      disentbench plugins --kind metric
      disentbench plugins show model beta_vae
    """
    if ctx.invoked_subcommand is not None:
        return
    registry = _registry()
    rows = [(r.kind, r.name, r.source, r.description) for r in registry.all(kind)]
    if as_json:
        click.echo(json.dumps([dict(zip(("kind", "name", "source", "description"), row)) for row in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("kind", "name", "source", "description", box=None, pad_edge=False)
        for row in rows:
            table.add_row(*row)
        Console(width=max(120, _term_width())).print(table)


@plugins_cmd.command("show")
@click.argument("kind", type=click.Choice(["model", "dataset", "metric", "task", "executor", "analysis"]))
@click.argument("name")
def plugins_show(kind, name):
    """Show a plugin's config schema (JSON schema with defaults).

    \b
    Example:
      disentbench plugins show metric mig
    """
    registry = _registry()
    try:
        registration = registry.get(kind, name)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    click.echo(f"{registration.kind} {registration.name} (from {registration.source}): {registration.description}")
    click.echo(json.dumps(registration.config.model_json_schema(), indent=2))


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


# ---------------------------------------------------------------------------
# run


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate and print the run table; train nothing.")
@click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N).")
@click.option("--tracking-uri", help="Override the MLflow tracking URI.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def run_cmd(config, dry_run, device, tracking_uri, quiet):
    """Run a study: train, score and record every run of the grid in MLflow.

    Finished runs (same run key) are skipped, so re-running resumes a study.

    \b
    Example:
      disentbench run examples/quickstart.yaml
      disentbench run examples/quickstart.yaml --dry-run
      disentbench run study.yaml --device cuda:1 --tracking-uri http://mlflow:5000
    """
    from disentbench.core.grid import expand_grid

    study = _load(config)
    if device is not None:
        from disentbench.core.config import TrainingConfig

        try:
            TrainingConfig(device=device)
        except Exception:
            raise BadInput(f"--device {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    specs = expand_grid(study, _registry())
    if dry_run:
        _print_run_table(specs)
        click.echo(f"{len(specs)} runs")
        return

    from disentbench.core.study import run_study

    try:
        result = run_study(study, device=device, tracking_uri=tracking_uri, config_path=Path(config), progress=not quiet)
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    except RuntimeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    _print_scores(result)
    if result.failed:
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
    Console(width=max(120, _term_width())).print(table)
    if len(shown) < len(specs):
        click.echo(f"(showing the first and last 100 of {len(specs)} runs)")


def _print_scores(result) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = result.headline_keys
    several_reps = len(result.config.evaluation.representations) > 1

    def header(key: str) -> str:
        _, representation, name, _ = key.split("/", 3)
        return f"{name} ({representation})" if several_reps else name

    table = Table(title=f"study {result.config.name}", box=None, pad_edge=False)
    for name in ("model", "params", "dataset", "seed", "status"):
        table.add_column(name, no_wrap=True)
    for key in columns:
        table.add_column(header(key), justify="right")
    for outcome in result.outcomes:
        spec = outcome.spec
        params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.swept.items())
        values = [f"{outcome.scores[c]:.3f}" if c in outcome.scores else "-" for c in columns]
        table.add_row(spec.model, params, spec.dataset, str(spec.seed), outcome.status, *values)
    Console(width=max(120, _term_width())).print(table)
    click.echo(f"Results are in MLflow ({result.tracking_uri}), experiment '{result.config.experiment_name}'.")
    click.echo(f"Open the MLflow UI: disentbench ui --tracking-uri {result.tracking_uri}")


# ---------------------------------------------------------------------------
# status


@main.command("status")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--tracking-uri", help="Override the MLflow tracking URI.")
def status_cmd(config, tracking_uri):
    """Per run of a study: finished, running, failed or pending (read from MLflow).

    \b
    Example:
      disentbench status examples/quickstart.yaml
    """
    from rich.console import Console
    from rich.table import Table

    from disentbench.core import tracking
    from disentbench.core.grid import expand_grid

    study = _load(config)
    specs = expand_grid(study, _registry())
    tracker = tracking.Tracker(tracking_uri or study.tracking.uri, study.experiment_name)
    experiment_id = tracker.existing_experiment_id()
    recorded = tracker.runs_by_key(experiment_id) if experiment_id else {}
    table = Table("#", "run", "run key", "status", box=None, pad_edge=False)
    counts: dict[str, int] = {}
    for spec in specs:
        status = tracking.status_of(recorded.get(spec.run_key, [])).lower()
        counts[status] = counts.get(status, 0) + 1
        table.add_row(str(spec.index), spec.run_name, spec.run_key, status)
    Console(width=max(120, _term_width())).print(table)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    click.echo(f"{len(specs)} runs: {summary}")


# ---------------------------------------------------------------------------
# ui


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@main.command("ui")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--tracking-uri", help="The MLflow store to show (default: the config's, or ./mlflow.db).")
@click.option("--port", type=int, default=None, help="Port (default: a free one).")
def ui_cmd(config, tracking_uri, port):
    """Start the MLflow UI for the study's store on 127.0.0.1 (Ctrl-C stops it).

    \b
    Example:
      disentbench ui
      disentbench ui examples/quickstart.yaml
    """
    from disentbench.core.tracking import Tracker, resolve_tracking_uri

    experiment_id = None
    if config:
        study = _load(config)
        tracking_uri = tracking_uri or study.tracking.uri
        experiment_id = Tracker(tracking_uri, study.experiment_name).existing_experiment_id()
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("http"):
        raise BadInput(f"{uri} is already a tracking server; open it in a browser instead")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    if experiment_id:
        url += f"#/experiments/{experiment_id}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    click.echo(f"MLflow UI for {uri}: {url}  (Ctrl-C to stop)")
    process = subprocess.Popen(command)
    try:
        sys.exit(process.wait())
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        click.echo("MLflow UI stopped.")


if __name__ == "__main__":
    main()
