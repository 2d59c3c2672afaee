"""``disentbench status``: where each run of a study stands, read from its MLflow store.

It answers "what is left to do" without training anything: the study's grid
says which runs should exist, the store says which finished, are running (an
owner's lease on them is alive), are stale (RUNNING, but the owner's lease
expired) or failed, and every run it has not seen is pending. It never creates a store or
an experiment, so a mistyped ``--tracking-uri`` leaves nothing behind.
"""

from __future__ import annotations

import click

from disentbench.core.cli._common import BadInput, load_study, plugin_registry, term_width


@click.command("status")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--tracking-uri", help="Override the MLflow tracking URI.")
def status_cmd(config, tracking_uri):
    """Per run of a study: finished, running, evaluating, stale, failed or pending (read from MLflow).

    A run is "running (HOST:PID)" while its owner's lease is alive, and
    "stale (owner lost)" once the lease expired (the owner was killed or lost
    the store); the next `disentbench run` takes a stale run over.

    \b
    Example:
      disentbench status examples/quickstart.yaml
    """
    from rich.console import Console
    from rich.table import Table

    from disentbench.core.config.grid import expand_grid
    from disentbench.core.tracking import tracker as tracking

    study = load_study(config)
    specs = expand_grid(study, plugin_registry())
    uri = tracking.resolve_tracking_uri(tracking_uri or study.tracking.uri)
    try:
        tracker, experiment_id = tracking.open_existing(uri, study.experiment_name)
    except tracking.TrackingError as exc:
        raise BadInput(str(exc)) from None
    recorded = tracker.runs_by_key(experiment_id) if experiment_id else {}
    if experiment_id is None:
        # every run pending is the truth before the first `run`, and a hint when the store is the wrong one
        click.echo(
            f"note: no experiment named {study.experiment_name!r} in {uri} yet, so every run is pending; "
            "if the study has run, pass its --tracking-uri (or run status where it ran)",
            err=True,
        )
    table = Table("#", "run", "run key", "status", box=None, pad_edge=False)
    counts: dict[str, int] = {}
    for spec in specs:
        runs = recorded.get(spec.run_key, [])
        status = tracking.status_of(runs).lower()
        if status in ("running", "stale") and any(_awaits_evaluation(r) for r in runs):
            status = "evaluating"  # a cluster run: trained (its GPU task done), evaluated by a CPU task
        counts[status] = counts.get(status, 0) + 1
        table.add_row(str(spec.index), spec.run_name, spec.run_key, _shown(status, runs))
    Console(width=max(120, term_width())).print(table)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    click.echo(f"{len(specs)} runs: {summary}")


def _awaits_evaluation(run) -> bool:
    return run.info.status == "RUNNING" and run.data.tags.get("disentbench.stage") in ("trained", "evaluating")


def _shown(status: str, runs: list) -> str:
    """The status column: who trains a running run, and that a stale one's owner is gone."""
    from disentbench.core.tracking import tracker as tracking

    if status == "stale":
        return "stale (owner lost)"
    if status == "running":
        for run in runs:
            lease = tracking.live_lease(run)
            if lease is not None:
                return f"running ({lease.label})"
    return status
