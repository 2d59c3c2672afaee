"""Running a study's analyses and turning their results into a report: every registered analysis is run
on the study table with failures isolated, the results become one self-contained HTML page (figures
embedded as base64 PNG) plus PNG, CSV and text files, and the report is recorded as an *analysis
run* (tag ``disentbench.kind=analysis``, top level, no parent) in the study's experiment.
:func:`analyze_study` is the whole pipeline the ``analyze`` command runs on a loaded table; heavy
libraries and MLflow are imported inside functions.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from disentbench.core.analysis.contract import AnalysisOutcome, AnalysisResult, AnalysisSkipped
from disentbench.core.analysis.table import StudyTable, format_value, score_gaps

if TYPE_CHECKING:  # pragma: no cover
    from disentbench.core.registry import PluginRegistry

TAG_KIND_ANALYSIS = "analysis"


# ---------------------------------------------------------------------------
# running analyses


def run_analyses(
    table: StudyTable,
    registry: PluginRegistry | None = None,
    *,
    only: Iterable[str] | None = None,
    params: dict[str, dict] | None = None,
) -> list[AnalysisOutcome]:
    """Run every registered analysis (or ``only`` these) on ``table``.

    An analysis that raises :class:`AnalysisSkipped` is recorded as skipped
    with its reason; any other exception is recorded as an error, and the
    remaining analyses still run (a third-party plugin must not take the report down).
    """
    from disentbench.core.registry import get_plugin_manager

    registry = registry or get_plugin_manager()
    names = list(only) if only else registry.names("analysis")
    outcomes = []
    for name in names:
        registration = registry.get("analysis", name)
        outcome = AnalysisOutcome(name, registration.description)
        try:
            analysis = registration.factory(registration.make_config((params or {}).get(name)))
            if len(table.runs) == 0:
                raise AnalysisSkipped("no finished runs yet")
            result = analysis.run(table)
            if not isinstance(result, AnalysisResult):
                raise TypeError(f"run() returned {type(result).__name__}, not an AnalysisResult")
            outcome.result = result
        except AnalysisSkipped as exc:
            outcome.skipped = str(exc) or "skipped"
        except Exception as exc:  # recorded in the report; the command exits 1
            outcome.error = f"{type(exc).__name__}: {exc}"
        outcomes.append(outcome)
    return outcomes


# ---------------------------------------------------------------------------
# the report


@dataclass
class Report:
    directory: Path
    html_path: Path
    files: list[Path]
    summary: str
    numbers: dict[str, float]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "item"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.muted{color:#666}.problem{color:#a40000}
.overview td{text-align:left}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
"""


def _table_html(frame, max_rows: int = 200) -> str:
    import pandas as pd

    shown = frame if len(frame) <= max_rows else frame.head(max_rows)
    text = shown.to_html(
        border=0,
        na_rep="-",
        float_format=lambda v: f"{v:.3g}" if abs(v) >= 1e4 or (0 < abs(v) < 1e-3) else f"{v:.3f}",
        index=not isinstance(shown.index, pd.RangeIndex),
    )
    if len(frame) > max_rows:
        text += f'<p class="muted">(first {max_rows} of {len(frame)} rows; all of them are in the CSV file)</p>'
    return text


def write_report(
    out_dir: str | Path,
    outcomes: list[AnalysisOutcome],
    *,
    title: str,
    overview: Sequence[tuple[str, str]] = (),
    missing_runs=None,
    missing_lines: Iterable[str] = (),
    intro: str = "",
) -> Report:
    """Write ``report.html`` (self-contained), ``figures/*.png``, ``tables/*.csv``,
    ``numbers.json`` and ``summary.txt`` into ``out_dir``.

    The "Missing" section lists ``missing_runs`` (a DataFrame of unfinished runs),
    ``missing_lines`` (scores absent and similar), every analysis skipped with its
    reason, parts of analyses skipped for lack of data, and analyses that failed.
    """
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    numbers: dict[str, float] = {}
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if intro:
        body.append(f"<p>{html.escape(intro)}</p>")
    if overview:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in overview)
        body.append(f'<table class="overview">{rows}</table>')

    done = [(o, o.result) for o in outcomes if o.result is not None]
    toc = [f'<li><a href="#{_slug(o.name)}">{html.escape(result.title)}</a></li>' for o, result in done]
    toc.append('<li><a href="#missing">Missing</a></li>')
    body.append(f"<ul>{''.join(toc)}</ul>")

    summary_lines: list[str] = []
    for outcome, result in done:
        body.append(f'<h2 id="{_slug(outcome.name)}">{html.escape(result.title)}</h2>')
        if outcome.description:
            body.append(f'<p class="muted">{html.escape(outcome.description)} (analysis <code>{html.escape(outcome.name)}</code>)</p>')
        for paragraph in result.paragraphs:
            body.append(f"<p>{html.escape(paragraph)}</p>")
        for stem, figure in result.figures.items():
            path = out_dir / "figures" / f"{_slug(outcome.name)}__{_slug(stem)}.png"
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110)
            data = buffer.getvalue()
            path.write_bytes(data)
            files.append(path)
            encoded = base64.b64encode(data).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(stem)}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{html.escape(stem)}</figcaption></figure>"
            )
        for caption, frame in result.tables.items():
            path = out_dir / "tables" / f"{_slug(outcome.name)}__{_slug(caption)}.csv"
            frame.to_csv(path)
            files.append(path)
            body.append(f"<h3>{html.escape(caption)}</h3>{_table_html(frame)}")
        for key, value in result.numbers.items():
            numbers[f"{outcome.name}/{key}"] = float(value)
        summary_lines.append(f"{outcome.name}: {result.summary_line()}")

    body.append('<h2 id="missing">Missing</h2>')
    missing_items: list[str] = []
    if missing_runs is not None and len(missing_runs):
        counts = missing_runs["status"].value_counts().to_dict() if "status" in missing_runs else {}
        counted = ", ".join(f"{n} {s}" for s, n in counts.items())
        body.append(f"<h3>Runs not finished ({len(missing_runs)}: {html.escape(counted)})</h3>{_table_html(missing_runs)}")
        path = out_dir / "tables" / "missing_runs.csv"
        missing_runs.to_csv(path, index=False)
        files.append(path)
        summary_lines.append(f"missing: {len(missing_runs)} run(s) not finished ({counted})")
    missing_lines = list(missing_lines)
    if missing_lines:
        missing_items += [f"<li>{html.escape(line)}</li>" for line in missing_lines]
    for outcome in outcomes:
        if outcome.skipped:
            missing_items.append(
                f"<li>analysis <code>{html.escape(outcome.name)}</code> skipped: {html.escape(outcome.skipped)}</li>"
            )
            summary_lines.append(f"{outcome.name}: skipped ({outcome.skipped})")
        if outcome.error:
            missing_items.append(
                f'<li class="problem">analysis <code>{html.escape(outcome.name)}</code> failed: '
                f"{html.escape(outcome.error)}</li>"
            )
            summary_lines.append(f"{outcome.name}: FAILED ({outcome.error})")
        if outcome.result is not None:
            for note in outcome.result.notes:
                missing_items.append(f"<li><code>{html.escape(outcome.name)}</code>: {html.escape(note)}</li>")
    if missing_items:
        body.append(f"<ul>{''.join(missing_items)}</ul>")
    elif missing_runs is None or not len(missing_runs):
        body.append("<p>Nothing: every run finished, every score is present and every analysis ran.</p>")

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    body.append(f'<p class="muted">Written by disentbench on {stamp}.</p>')
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    files.insert(0, html_path)
    summary = "\n".join([title] + summary_lines)
    (out_dir / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    (out_dir / "numbers.json").write_text(json.dumps(numbers, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files += [out_dir / "summary.txt", out_dir / "numbers.json"]
    return Report(out_dir, html_path, files, summary, numbers)


def mlflow_metric_name(name: str) -> str:
    """MLflow accepts alphanumerics and ``_ - . space : /`` in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)[:250]


def log_report(
    report: Report,
    *,
    tracking_uri: str | None,
    experiment: str,
    kind: str = TAG_KIND_ANALYSIS,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    run_name: str | None = None,
) -> str:
    """Record ``report`` as a top-level run (tag ``disentbench.kind=<kind>``) in ``experiment``.

    The HTML, PNG, CSV and text files are its artifacts (in the same relative
    layout as on disk), ``report.numbers`` its metrics. Returns the run id.
    """
    from disentbench.core.tracking import tracker as tracking

    tracker = tracking.Tracker(tracking_uri, experiment)
    from disentbench.version import __version__

    all_tags = {tracking.TAG_KIND: kind, "disentbench.version": __version__, **(tags or {})}
    run = tracker.client.create_run(
        tracker.experiment_id, tags=all_tags, run_name=run_name or f"{kind} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    run_id = run.info.run_id
    try:
        if params:
            tracker.log_params(run_id, {k: str(v)[:6000] for k, v in params.items()})
        finite = {mlflow_metric_name(k): v for k, v in report.numbers.items() if math.isfinite(v)}
        if finite:
            tracker.log_metrics(run_id, finite)
        for path in report.files:
            relative = path.parent.relative_to(report.directory)
            tracker.log_artifact(run_id, path, None if str(relative) == "." else str(relative))
    except BaseException:
        tracker.end_run(run_id, tracking.FAILED)
        raise
    tracker.end_run(run_id, tracking.FINISHED)
    return run_id


# ---------------------------------------------------------------------------
# the whole pipeline


@dataclass
class AnalysisRun:
    table: StudyTable
    outcomes: list[AnalysisOutcome]
    report: Report
    run_id: str | None

    @property
    def failed(self) -> list[AnalysisOutcome]:
        return [o for o in self.outcomes if o.error]


def overview_rows(table: StudyTable) -> list[tuple[str, str]]:
    runs = table.runs
    finished = len(runs)
    expected = table.expected_runs
    count = f"{finished} finished" + (f" of {expected} expected" if expected is not None else "")
    objectives = []
    for objective in table.objectives:
        name = table.hyperparameter_name(objective)
        values = sorted(runs.loc[runs["objective"] == objective, "hp_value"].dropna().unique())
        swept = f" sweeping {name} over {', '.join(format_value(v) for v in values)}" if name else ""
        objectives.append(objective + swept)
    metrics = sorted({c.split("/")[2] for c in table.columns("eval/")})
    tasks = sorted({c.split("/")[2] for c in table.columns("downstream/")})
    return [
        ("study", table.study),
        ("experiment", f"{table.experiment} ({table.tracking_uri})"),
        ("runs", count),
        ("datasets", ", ".join(table.datasets) or "-"),
        ("objectives", "; ".join(objectives) or "-"),
        ("seeds", ", ".join(str(s) for s in sorted(runs["seed"].unique())) if finished else "-"),
        ("representations", ", ".join(table.representations()) or "-"),
        ("metrics", ", ".join(metrics) or "-"),
        ("downstream tasks", ", ".join(tasks) or "-"),
    ]


def analyze_study(
    table: StudyTable,
    out_dir: str | Path,
    *,
    registry: PluginRegistry | None = None,
    only: Iterable[str] | None = None,
    log: bool = True,
) -> AnalysisRun:
    """Run the analyses on ``table``, write the report to ``out_dir`` and (if ``log``) record it in MLflow."""
    outcomes = run_analyses(table, registry, only=only)
    report = write_report(
        out_dir,
        outcomes,
        title=f"disentbench analysis of study {table.study}",
        overview=overview_rows(table),
        missing_runs=table.incomplete,
        missing_lines=list(table.notes) + score_gaps(table),
    )
    for outcome in outcomes:  # the report's figures are written; free their memory
        if outcome.result is not None:
            outcome.result.figures.clear()
    run_id = None
    if log:
        run_id = log_report(
            report,
            tracking_uri=table.tracking_uri,
            experiment=table.experiment,
            tags={"study": table.study},
            params={
                "analyses": ",".join(o.name for o in outcomes),
                "finished_runs": len(table.runs),
                "expected_runs": table.expected_runs if table.expected_runs is not None else "unknown",
            },
            run_name=f"analysis {time.strftime('%Y-%m-%d %H:%M:%S')}",
        )
    return AnalysisRun(table, outcomes, report, run_id)
