"""``disentbench analyze`` and ``disentbench theorem``: the commands that write analysis reports.

Both turn numbers into a self-contained HTML report with figures, logged as
an MLflow run: ``analyze`` from a study's recorded runs, ``theorem`` from the
Theorem 1 demonstration it computes itself. Exit codes as everywhere: 0
success, 1 a command or an analysis failed, 2 bad input. Heavy imports happen
inside the commands so ``disentbench --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from disentbench.core.cli._common import EXIT_FAILURE, BadInput, plugin_registry, reading_study, study_target


def _quiet_mlflow() -> None:
    # mlflow sets its logger to INFO when imported, so quieten it after the import
    import mlflow  # noqa: F401

    from disentbench.core.tracking.tracker import quiet_mlflow_logs

    quiet_mlflow_logs()


@click.command("analyze")
@click.argument("target", metavar="CONFIG|EXPERIMENT")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Report folder (default: analysis/<experiment>).")
@click.option("--tracking-uri", help="The MLflow store (default: the config's, $MLFLOW_TRACKING_URI, or ./mlflow.db).")
@click.option("--only", multiple=True, metavar="NAME", help="Run only this analysis (repeatable).")
@click.option("--no-log", is_flag=True, help="Write the report locally only; record no analysis run in MLflow.")
def analyze_cmd(target, out_dir, tracking_uri, only, no_log):
    """Analyse a study's runs: figures, a self-contained HTML report, and an MLflow analysis run.

    CONFIG|EXPERIMENT is a study config file (its grid tells which runs are
    still missing) or the name of an MLflow experiment. Every registered
    analysis runs (see `disentbench plugins --kind analysis`); those the study
    lacks data for are listed, with the reason, in the report's "Missing"
    section. The report is also logged as artifacts of a run tagged
    disentbench.kind=analysis in the study's experiment.

    \b
    Example:
      disentbench analyze examples/study_v1_dsprites_small.yaml
      disentbench analyze study_v1_dsprites_small --out /tmp/report
      disentbench analyze study.yaml --only metric_agreement --only downstream
    """
    from disentbench.core.analysis.loading import load_study_table
    from disentbench.core.analysis.report import analyze_study

    _quiet_mlflow()
    registry = plugin_registry()
    known = registry.names("analysis")
    unknown = [name for name in only if name not in known]
    if unknown:
        raise BadInput(f"unknown analysis {', '.join(unknown)}; known: {', '.join(known) or 'none'}")

    config, experiment, tracking_uri = study_target(target, tracking_uri)
    with reading_study():
        table = load_study_table(tracking_uri, experiment, config=config, registry=registry)

    out = Path(out_dir) if out_dir else Path("analysis") / _safe_name(experiment)
    try:
        outcome = analyze_study(table, out, registry=registry, only=only or None, log=not no_log)
    except OSError as exc:
        click.echo(f"error: cannot write the report to {out}: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except Exception as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_FAILURE)

    click.echo(outcome.report.summary)
    click.echo(f"report: {outcome.report.html_path}")
    if outcome.run_id:
        click.echo(f"MLflow: analysis run {outcome.run_id} in experiment '{experiment}' ({table.tracking_uri})")
    if len(table.runs) == 0:
        click.echo("warning: no finished runs yet; the report lists what is missing.", err=True)
    if outcome.failed:
        click.echo(f"{len(outcome.failed)} analysis(es) failed; see the report's Missing section.", err=True)
        sys.exit(EXIT_FAILURE)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "study"


@click.command("theorem")
@click.option("--dims", type=int, default=2, show_default=True, help="Latent dimensions d (>= 2).")
@click.option(
    "--marginals",
    default="uniform,exponential",
    show_default=True,
    help="Comma-separated marginals, cycled over the dimensions: uniform, exponential, beta, laplace, gamma, lognormal.",
)
@click.option("--samples", type=int, default=5000, show_default=True, help="Samples of z.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--alpha", type=float, default=None, help="Householder parameter in (0, 1/2) (default (1 - 1/sqrt(d))/2).")
@click.option("--angle", type=float, default=None, help="2-D: a rotation by this many degrees instead.")
@click.option(
    "--metrics",
    default="mig,dci,factor_vae_score",
    show_default=True,
    help="Comma-separated metric plugins scored on z and f(z).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="analysis/theorem1", show_default=True)
@click.option("--tracking-uri", help="The MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db).")
@click.option("--experiment", default="theorem1", show_default=True, help="MLflow experiment of the run.")
@click.option("--no-log", is_flag=True, help="Write the report locally only.")
def theorem_cmd(dims, marginals, samples, seed, alpha, angle, metrics, out_dir, tracking_uri, experiment, no_log):
    """Demonstrate Theorem 1: a fully entangled f(z) with exactly the distribution of z.

    Builds f = g^-1 . h^-1 . A . h . g (g: marginal CDFs, h: normal quantile,
    A: an orthogonal matrix with no zero entry) and measures: the round trip
    f^-1(f(z)) = z, two-sample tests of the marginals and of the joint law, the
    Jacobian (no zero entry), and metric scores of z (high) vs f(z) (low).
    Exits 1 if the round trip or the Jacobian check fails.

    \b
    Example:
      disentbench theorem
      disentbench theorem --dims 3 --marginals uniform,exponential,beta --samples 20000
      disentbench theorem --angle 30 --metrics mig --out /tmp/theorem
    """
    from pydantic import ValidationError

    from disentbench.core.config.problems import pydantic_problems
    from disentbench.core.theorem import TheoremConfig, run_theorem
    try:
        config = TheoremConfig(
            dims=dims,
            marginals=[m.strip() for m in marginals.split(",") if m.strip()],
            samples=samples,
            seed=seed,
            alpha=alpha,
            angle=angle,
            metrics=[m.strip() for m in metrics.split(",") if m.strip()],
        )
    except ValidationError as exc:
        problems = [p.removeprefix("<config>: ") for p in pydantic_problems(exc)]
        raise BadInput("; ".join(p if p.startswith("--") or ":" not in p.split()[0] else f"--{p}" for p in problems)) from None
    if not no_log:
        _quiet_mlflow()
    from disentbench.core.tracking.tracker import TrackingError

    registry = plugin_registry()
    known = registry.names("metric")
    unknown = [name for name in config.metrics if name not in known]
    if unknown:
        raise BadInput(
            f"--metrics: unknown metric {', '.join(map(repr, unknown))}; known: {', '.join(known) or 'none'}"
        )
    try:
        demo, report, run_id = run_theorem(
            config, Path(out_dir), tracking_uri=tracking_uri, experiment=experiment, log=not no_log, registry=registry
        )
    except TrackingError as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(report.summary)
    for check, passed in demo.checks.items():
        click.echo(f"{'ok  ' if passed else 'FAIL'} {check}")
    low = [k for k, v in demo.numbers.items() if k.endswith("pvalue") and "control" not in k and v < 0.01]
    low += [k for k, v in demo.numbers.items() if k.startswith("ks_pvalue/") and v < 0.01]
    if low:
        click.echo(f"note: p < 0.01 for {', '.join(low)} (expected now and then by chance; try another --seed)")
    click.echo(f"report: {report.html_path}")
    if run_id:
        click.echo(f"MLflow: run {run_id} in experiment '{experiment}'")
    if not all(demo.checks.values()):
        sys.exit(EXIT_FAILURE)
