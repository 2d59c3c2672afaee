"""Reading a study back from MLflow into a :class:`~disentbench.core.analysis.table.StudyTable`. This
is the one place that knows how the study records its runs (the ``disentbench.kind`` tags, run keys,
the ``model.*`` / ``dataset.*`` / ``training.*`` params and the score prefixes) and how to tell
finished runs from those still missing, so the table and the analyses stay independent of the
tracking store; MLflow, pandas and the grid expansion are imported only when a table is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from disentbench.core.analysis.table import SCORE_PREFIXES, TRAIN_PREFIX, StudyTable, format_value

if TYPE_CHECKING:  # pragma: no cover
    from disentbench.core.config.schema import StudyConfig
    from disentbench.core.registry import PluginRegistry


def headlines_from_registry(registry: PluginRegistry) -> dict[str, tuple[str, ...]]:
    """Each metric and task plugin's headline keys (the ``headline`` attribute of its factory)."""
    out: dict[str, tuple[str, ...]] = {}
    for kind in ("metric", "task"):
        for registration in registry.all(kind):
            headline = getattr(registration.factory, "headline", None)
            if headline:
                out[registration.name] = tuple(headline)
    return out


class MixedEvaluationError(ValueError):
    """A study's finished runs were scored under different evaluation protocols (mode or seed convention)."""


def evaluation_protocol(tags: dict[str, str]) -> str:
    """How a run was scored, from its tags: ``exact, per_metric seeds``. Runs older than the tags were exact/per_metric."""
    return f"{tags.get('evaluation.mode', 'exact')}, {tags.get('evaluation.seed_convention', 'per_metric')} seeds"


def check_one_protocol(runs, experiment: str) -> None:
    """Refuse to put side by side scores of runs evaluated under different protocols (one line saying which)."""
    counts: dict[str, int] = {}
    for run in runs:
        protocol = evaluation_protocol(run.data.tags)
        counts[protocol] = counts.get(protocol, 0) + 1
    if len(counts) > 1:
        found = "; ".join(f"{protocol}: {count} runs" for protocol, count in sorted(counts.items()))
        raise MixedEvaluationError(
            f"the runs of {experiment!r} were scored under different evaluation protocols ({found}), whose scores "
            "are not comparable; give each protocol its own tracking.experiment, or re-run the study with one "
            "evaluation.fast / evaluation.seed_convention in a new experiment"
        )


def _run_row(run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_key": tags.get("run_key", ""),
        "model": tags.get("model", params.get("model", "")),
        "dataset": tags.get("dataset", params.get("dataset", "")),
        "seed": tags.get("seed", params.get("seed", "0")),
    }
    for key, value in params.items():
        if key.startswith(("model.", "dataset.", "training.")):
            row[key] = value
    for key, value in metrics.items():  # run.data.metrics holds each metric's last value
        if key.startswith(SCORE_PREFIXES + (TRAIN_PREFIX,)):
            row[key] = value
    return row


def load_study_table(
    tracking_uri: str | None,
    experiment: str,
    *,
    config: StudyConfig | None = None,
    registry: PluginRegistry | None = None,
) -> StudyTable:
    """Read a study's runs from MLflow into a :class:`StudyTable`.

    With the study ``config`` the expected grid is known, so runs never started
    are listed as missing; without it, the last study invocation's ``num_runs``
    param gives the expected count. Raises ``LookupError`` if the experiment does
    not exist or holds no study runs.
    """
    import pandas as pd

    from disentbench.core.registry import get_plugin_manager
    from disentbench.core.tracking import tracker as tracking

    registry = registry or get_plugin_manager()
    tracker, experiment_id = tracking.open_existing(tracking_uri, experiment)
    if experiment_id is None:
        raise LookupError(f"no experiment named {experiment!r} in {tracking.resolve_tracking_uri(tracking_uri)}")
    if tracker is None:  # open_existing gives a tracker whenever it gives an experiment id
        raise RuntimeError("no tracker for an existing experiment")
    children = tracker.search(f"tags.`{tracking.TAG_KIND}` = 'run'", experiment_id)
    parents = tracker.search(f"tags.`{tracking.TAG_KIND}` = 'study'", experiment_id)
    if not children and not parents and config is None:
        raise LookupError(f"experiment {experiment!r} in {tracker.uri} holds no disentbench study runs")

    by_key: dict[str, list] = {}
    for run in children:
        by_key.setdefault(run.data.tags.get(tracking.TAG_RUN_KEY) or run.info.run_id, []).append(run)
    finished_rows, unfinished, latest_runs = [], [], []
    for key, runs in by_key.items():
        done = [r for r in runs if r.info.status == tracking.FINISHED]
        if done:
            latest = max(done, key=lambda r: r.info.end_time or 0)
            latest_runs.append(latest)
            finished_rows.append(_run_row(latest))
        else:
            row = _run_row(runs[0])
            unfinished.append(
                {"model": row["model"], "dataset": row["dataset"], "seed": row["seed"],
                 "status": tracking.status_of(runs).lower(), "run_key": key}
            )

    check_one_protocol(latest_runs, experiment)
    notes: list[str] = []
    expected_runs = None
    if config is not None:
        from disentbench.core.config.grid import expand_grid

        specs = expand_grid(config, registry)
        expected_runs = len(specs)
        finished_keys = {row["run_key"] for row in finished_rows}
        recorded = {row["run_key"]: row["status"] for row in unfinished}
        unfinished = [
            {
                "model": spec.model,
                "config": " ".join(f"{k}={format_value(v)}" for k, v in spec.swept.items()),
                "dataset": spec.dataset,
                "seed": spec.seed,
                "status": recorded.get(spec.run_key, "pending"),
                "run_key": spec.run_key,
            }
            for spec in specs
            if spec.run_key not in finished_keys
        ]
        expected_keys = {spec.run_key for spec in specs}
        extra = [row for row in finished_rows if row["run_key"] not in expected_keys]
        if extra:
            notes.append(
                f"{len(extra)} finished run(s) in the experiment are not in the config's grid "
                "(an earlier version of the config?); they are analysed too"
            )
        study_name = config.name
    else:
        study_name = next((r.data.tags.get(tracking.TAG_STUDY) for r in children + parents
                           if r.data.tags.get(tracking.TAG_STUDY)), experiment)
        if parents:
            latest_parent = max(parents, key=lambda r: r.info.start_time or 0)
            try:
                expected_runs = int(latest_parent.data.params.get("num_runs"))
            except (TypeError, ValueError):
                expected_runs = None
            if expected_runs is not None and expected_runs > len(by_key):
                notes.append(
                    f"the study's last invocation planned {expected_runs} runs; {len(by_key)} are recorded, so "
                    f"{expected_runs - len(by_key)} never started (pass the study config to list them)"
                )

    frame = pd.DataFrame(finished_rows) if finished_rows else pd.DataFrame(columns=["run_id", "run_key", "model", "dataset", "seed"])
    incomplete = pd.DataFrame(unfinished, columns=["model", "config", "dataset", "seed", "status", "run_key"])
    if config is None:
        incomplete = incomplete.drop(columns=["config"])
    table = StudyTable.from_frame(
        frame,
        study=study_name,
        experiment=experiment,
        tracking_uri=tracker.uri,
        incomplete=incomplete,
        expected_runs=expected_runs,
        headlines=headlines_from_registry(registry),
        notes=notes,
    )
    if config is not None:
        for representation in config.evaluation.representations:
            for kind, refs in (("eval", config.evaluation.metrics), ("downstream", config.evaluation.tasks)):
                for ref in refs:
                    if not table.columns(f"{kind}/{representation}/{ref.name}/"):
                        table.notes.append(f"{ref.name} on the {representation} representation: in the config, "
                                           "but no finished run has recorded it")
    return table
