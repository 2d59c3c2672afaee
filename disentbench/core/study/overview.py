"""The study at a glance, on its parent run and in the MLflow UI's first view, kept current as runs finish.

The parent run of an invocation carries ``study/scores.csv`` and
``study/scores.html`` (one row per run of the grid: name, model, swept
hyperparameters, dataset, seed, status, headline scores, run id) and
``study/scores.png`` (:func:`~disentbench.core.display.study_plot.scores_figure`:
headline scores per model and hyperparameter setting). They are built from the
outcomes the run loop already holds (no query of the store) and re-logged
when runs finish, throttled: at most once every ``PUBLISH_EVERY_S`` seconds
and never sooner than ``COST_FACTOR`` times the last publication's own
duration, so a study of 12,600 runs spends a bounded share of its time on it
(one publication is linear in the number of runs), plus once at the start and
once at the end. The experiment's shared view (:mod:`~disentbench.core.tracking.view`)
is written at the start with the scorers' declared headline scores and at the
end with those recorded. Headline scores are the scorers' ``headline`` keys,
as ``compare`` and ``analyze`` pick them (every recorded key of a scorer that
declares none). A failure to publish is a warning, never the study's failure.
"""

from __future__ import annotations

import csv
import html
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from disentbench.core.config.grid import RunSpec
from disentbench.core.config.schema import StudyConfig
from disentbench.core.evaluation.evaluate import score_prefix
from disentbench.core.messages import first_line
from disentbench.core.study.context import Scorer
from disentbench.core.study.jobs import RunOutcome
from disentbench.core.tracking import view

ARTIFACT_DIR = "study"
FILES = ("scores.csv", "scores.html", "scores.png")
PUBLISH_EVERY_S = 60.0
COST_FACTOR = 20.0


def study_headline_keys(config: StudyConfig, scorers: Sequence[Scorer], recorded: set[str]) -> list[str]:
    """Declared headline scores, and every recorded key of a scorer that declares none, in config order."""
    keys: list[str] = []
    for representation in config.evaluation.representations:
        for kind, name, scorer in scorers:
            prefix = score_prefix(kind, representation, name)
            headline = getattr(scorer, "headline", None)
            if headline:
                keys.extend(prefix + k for k in headline)
            else:
                keys.extend(sorted(k for k in recorded if k.startswith(prefix)))
    return keys


def status_label(outcome: RunOutcome | None) -> str:
    """A run's state for the table: pending, finished, failed, trained (evaluating) or in progress elsewhere."""
    if outcome is None:
        return "pending"
    if outcome.status == "skipped":
        return "finished" if outcome.error in (None, "done") else f"elsewhere ({outcome.error})"
    if outcome.status == "trained":
        return "trained, evaluating"
    return outcome.status


def table_rows(
    specs: Sequence[RunSpec], outcomes: Mapping[str, RunOutcome], keys: Sequence[str]
) -> tuple[list[str], list[list[object]]]:
    """The header and rows of the scores table (one row per spec, grid order); a missing score is None."""
    swept = list(dict.fromkeys(k for spec in specs for k in spec.swept))
    header = ["run", "model", *swept, "dataset", "seed", "status", *keys, "run_id"]
    rows = []
    for spec in specs:
        outcome = outcomes.get(spec.run_key)
        scores = outcome.scores if outcome is not None else {}
        rows.append([
            spec.run_name, spec.model, *(spec.swept.get(k) for k in swept), spec.dataset, spec.seed,
            status_label(outcome), *(scores.get(k) for k in keys), (outcome.run_id if outcome else None) or "",
        ])
    return header, rows


def _score(outcome: RunOutcome | None, key: str) -> float:
    value = outcome.scores.get(key) if outcome is not None else None
    return math.nan if value is None else float(value)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if v is None else repr(v) if isinstance(v, float) else v for v in row] for row in rows])


def write_html(path: Path, title: str, header: Sequence[str], rows: Sequence[Sequence[object]], note: str) -> None:
    status_at = header.index("status")
    lines = [
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
        "body{font-family:sans-serif;font-size:13px;margin:12px}table{border-collapse:collapse}"
        "th,td{border:1px solid #ddd;padding:2px 6px;white-space:nowrap}th{background:#f3f3f3;position:sticky;top:0}"
        "td.n{text-align:right;font-variant-numeric:tabular-nums}tr.failed td{background:#fde8e8}"
        "tr.pending td{color:#888}</style></head><body>",
        f"<h3>{html.escape(title)}</h3><p>{html.escape(note)}</p><table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
    ]
    for row in rows:
        state = str(row[status_at]).split(" ", 1)[0].strip(",")
        cells = "".join(
            f"<td class='n'>{_cell(v)}</td>" if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{html.escape(_cell(v))}</td>" for v in row
        )
        lines.append(f"<tr class='{html.escape(state)}'>{cells}</tr>")
    lines.append("</table></body></html>")
    path.write_text("\n".join(lines))


class StudyOverview:
    """The parent run's scores table and plot, and the experiment's shared view, for one invocation.

    ``outcomes`` is the run loop's own dict (run key -> outcome), read at each
    publication; call :meth:`changed` when it gained an outcome and
    :meth:`publish` at the end.
    """

    def __init__(
        self,
        tracker,
        parent_run_id: str,
        config: StudyConfig,
        scorers: Sequence[Scorer],
        specs: Sequence[RunSpec],
        outcomes: Mapping[str, RunOutcome],
        *,
        every: float = PUBLISH_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tracker, self.parent_run_id, self.config, self.scorers = tracker, parent_run_id, config, scorers
        self.specs, self.outcomes, self.every, self.clock = specs, outcomes, every, clock
        self.last: float | None = None  # clock time of the last publication
        self.cost = 0.0  # seconds the last publication took
        self.publications = 0
        self.dirty = True
        self._warned = False

    def keys(self) -> list[str]:
        recorded = {k for outcome in self.outcomes.values() for k in outcome.scores}
        return study_headline_keys(self.config, self.scorers, recorded)

    def param_keys(self) -> list[str]:
        return [f"model.{k}" for k in dict.fromkeys(k for spec in self.specs for k in spec.swept)]

    def write_view(self, keys: Sequence[str] | None = None) -> None:
        """The experiment's shared view with these headline keys (default: declared and recorded ones)."""
        self._safely(lambda: view.write_view(
            self.tracker.client, self.tracker.experiment_id, list(self.keys() if keys is None else keys),
            self.param_keys(),
        ))

    def changed(self) -> bool:
        """An outcome arrived: publish if the throttle allows; True if it published."""
        self.dirty = True
        if self.last is not None and self.clock() - self.last < max(self.every, COST_FACTOR * self.cost):
            return False
        self.publish()
        return True

    def publish(self, *, force: bool = False) -> None:
        """Log the table and plot now (unless nothing changed since the last publication and not ``force``)."""
        if not (self.dirty or force):
            return
        started = self.clock()
        self._safely(self._publish)
        self.last = self.clock()
        self.cost = self.last - started
        self.dirty = False

    def _publish(self) -> None:
        from disentbench.core.display.images import save_figure
        from disentbench.core.display.study_plot import scores_figure

        keys = self.keys()
        header, rows = table_rows(self.specs, self.outcomes, keys)
        status_at = header.index("status")
        finished = sum(row[status_at] == "finished" for row in rows)
        failed = sum(row[status_at] == "failed" for row in rows)
        note = (f"{finished} of {len(rows)} runs finished, {failed} failed; updated "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}. Headline scores of each metric and task.")
        title = f"{self.config.name}: headline scores"
        groups = [" ".join([spec.model, *(f"{k}={_cell(v)}" for k, v in spec.swept.items())]) for spec in self.specs]
        columns = {key: [_score(self.outcomes.get(spec.run_key), key) for spec in self.specs] for key in keys}
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            write_csv(tmp / "scores.csv", header, rows)
            write_html(tmp / "scores.html", title, header, rows, note)
            figure = scores_figure(groups, [spec.dataset for spec in self.specs], columns,
                                   title=f"{title} ({finished} of {len(rows)} runs finished)")
            save_figure(figure, tmp / "scores.png")
            for name in FILES:
                self.tracker.log_artifact(self.parent_run_id, tmp / name, ARTIFACT_DIR)
        self.publications += 1

    def _safely(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # the overview is a convenience: never the study's failure
            if not self._warned:
                self._warned = True
                print(f"disentbench: warning: cannot update the study overview on the parent run "
                      f"({type(exc).__name__}: {first_line(exc)}); the runs are not affected", file=sys.stderr)
