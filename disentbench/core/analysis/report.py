"""Study analyses: the runs of a study read back from MLflow, analysis plugins, and the report.

Three pieces, each usable on its own:

* :func:`load_study_table` reads a study's child runs (tag ``disentbench.kind=run``)
  into a :class:`StudyTable`: one row per finished run with its identity
  (``run_id``, ``run_key``, ``model``, ``dataset``, ``seed``), its ``model.*``,
  ``dataset.*`` and ``training.*`` params, every ``eval/`` and ``downstream/``
  score and the last value of every ``train/`` term. What the study lacks
  (unfinished runs, scores absent) is kept beside it. Which hyperparameters
  were swept is inferred from the data (:meth:`StudyTable.from_frame`), so no
  model, metric or dataset name is written into the engine.
* An *analysis* is a plugin (``register_analyses``) whose factory returns an
  object with ``run(table) -> AnalysisResult``; it raises
  :class:`AnalysisSkipped` when the study lacks what it needs.
* :func:`write_report` renders the results as one self-contained HTML page
  (figures embedded as base64 PNG) plus the PNG and CSV files;
  :func:`log_report` records them as artifacts of an *analysis run* (tag
  ``disentbench.kind=analysis``, top level, no parent) in the study's experiment.

Heavy libraries (pandas, matplotlib, scipy) are imported inside functions:
plugin modules import this one when the registry is built, on every CLI call.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol, runtime_checkable

import numpy as np
from pydantic import Field

from disentbench.core.contracts import PluginConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from disentbench.core.config.schema import StudyConfig
    from disentbench.core.registry import PluginRegistry

TAG_KIND_ANALYSIS = "analysis"
#: Columns every row of a study table has (besides params and scores).
IDENTITY_COLUMNS = ["run_id", "run_key", "model", "dataset", "seed", "objective", "hyperparameters", "config", "hp_value"]
SCORE_PREFIXES = ("eval/", "downstream/")
TRAIN_PREFIX = "train/"
#: train/ entries that are bookkeeping, not loss terms
TRAIN_BOOKKEEPING = ("train/seconds", "train/model_steps_per_second")


# ---------------------------------------------------------------------------
# configs, results and the plugin protocol


class AnalysisConfig(PluginConfig):
    """Base config of the built-in analyses (third-party ones may derive from it too)."""

    representation: str = Field("mean", description="Which representation's scores to analyse (study: mean).")
    metrics: list[str] | None = Field(
        None, description="Only these metric plugins (default: every metric the study recorded)."
    )
    exclude_metrics: list[str] = Field(default_factory=list, description="Metric plugins left out.")
    min_runs: int = Field(3, ge=2, description="Fewest runs (per dataset) a rank correlation is computed on.")


def metric_columns(table: "StudyTable", config: AnalysisConfig) -> list[str]:
    """The headline score columns an analysis with ``config`` looks at."""
    return table.score_columns(config.representation, config.metrics, config.exclude_metrics)


class AnalysisSkipped(Exception):
    """Raised by an analysis that cannot run on this study; the message says what is missing."""


@dataclass
class AnalysisResult:
    """What an analysis found.

    ``paragraphs``: one per finding, each stating the measured number.
    ``tables``: caption -> DataFrame. ``figures``: file stem -> matplotlib Figure.
    ``numbers``: headline numbers, logged as MLflow metrics ``<analysis>/<key>``.
    ``notes``: parts skipped for lack of data (listed in the report's "missing" section).
    ``summary``: one line for the terminal (default: the first sentence of the first paragraph).
    """

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: str = ""

    def summary_line(self) -> str:
        if self.summary:
            return self.summary
        if not self.paragraphs:
            return "no findings"
        first = self.paragraphs[0]
        match = re.search(r"(?<=[a-z0-9)%])\.\s", first)
        return first[: match.start() + 1] if match else first


@runtime_checkable
class Analysis(Protocol):
    """The object an analysis plugin's factory returns."""

    def run(self, table: "StudyTable") -> AnalysisResult: ...


@dataclass
class AnalysisOutcome:
    """One analysis of a report: its result, or why it was skipped, or how it failed."""

    name: str
    description: str = ""
    result: AnalysisResult | None = None
    skipped: str | None = None
    error: str | None = None


# ---------------------------------------------------------------------------
# the study table


def _is_numeric(values) -> bool:
    import pandas as pd

    present = values.dropna()
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().all()


def _short_param(column: str) -> str:
    return column.split(".", 1)[1] if "." in column else column


def format_value(value: Any) -> str:
    """Compact display of a hyperparameter value: 4.0 -> '4', 0.25 -> '0.25'."""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "nan"
        if float(value).is_integer():
            return str(int(value))
        return f"{value:g}"
    return str(value)


@dataclass
class StudyTable:
    """A study's finished runs as a tidy DataFrame plus what the study still lacks.

    ``runs`` columns: ``run_id, run_key, model, dataset, seed`` (from the run's
    tags), ``objective`` (the model plus the params that separate its entries
    in the study, e.g. ``dip_vae (variant=i)``), ``hyperparameters`` (the swept
    values, ``beta=4``), ``config`` (objective and swept values),
    ``hp_value`` (the first swept param as a number), every ``model.*`` /
    ``dataset.*`` / ``training.*`` param (numbers where they parse), every
    ``eval/<rep>/<metric>/<key>`` and ``downstream/<rep>/<task>/<key>`` score and
    the last value of each ``train/<term>``.
    """

    runs: Any  # pandas.DataFrame
    study: str = ""
    experiment: str = ""
    tracking_uri: str | None = None
    hyperparameters: dict[str, list[str]] = field(default_factory=dict)  # objective -> swept model.* columns
    incomplete: Any = None  # DataFrame of runs not finished: model, dataset, seed, status, run_key (+ config)
    expected_runs: int | None = None
    headlines: dict[str, tuple[str, ...]] = field(default_factory=dict)  # metric/task -> its headline keys
    notes: list[str] = field(default_factory=list)  # what the loader found missing

    # -- construction --------------------------------------------------------
    @classmethod
    def from_frame(
        cls,
        frame,
        *,
        study: str = "",
        experiment: str = "",
        tracking_uri: str | None = None,
        incomplete=None,
        expected_runs: int | None = None,
        headlines: dict[str, tuple[str, ...]] | None = None,
        notes: Iterable[str] = (),
    ) -> "StudyTable":
        """A table from one row per finished run (``model``, ``dataset``, ``seed``, params, scores).

        Swept hyperparameters are inferred per model: the ``model.*`` params that
        take more than one value within some (model, dataset) group. Among those,
        non-numeric params (and numeric ones fully determined by them, such as
        DIP-VAE's ``lambda_d_factor`` by its ``variant``) separate *objectives*;
        the remaining numeric ones are the hyperparameters.
        """
        import pandas as pd

        runs = frame.copy().reset_index(drop=True)
        for column in ("model", "dataset"):
            if column not in runs.columns:
                raise ValueError(f"a study table needs a {column!r} column")
            runs[column] = runs[column].astype(str)
        if "seed" not in runs.columns:
            runs["seed"] = 0
        runs["seed"] = pd.to_numeric(runs["seed"], errors="coerce").fillna(-1).astype(int)
        for column in ("run_id", "run_key"):
            if column not in runs.columns:
                runs[column] = [f"row{i}" for i in range(len(runs))]
        for column in runs.columns:
            if column.startswith(("model.", "dataset.", "training.")):
                if not pd.api.types.is_numeric_dtype(runs[column]) and _is_numeric(runs[column]):
                    runs[column] = pd.to_numeric(runs[column], errors="coerce")
            elif column.startswith(SCORE_PREFIXES + (TRAIN_PREFIX,)):
                runs[column] = pd.to_numeric(runs[column], errors="coerce")

        runs["dataset"] = _dataset_labels(runs)
        hyperparameters: dict[str, list[str]] = {}
        objectives = pd.Series("", index=runs.index, dtype=object)
        hp_labels = pd.Series("", index=runs.index, dtype=object)
        hp_values = pd.Series(np.nan, index=runs.index, dtype=float)
        param_columns = [c for c in runs.columns if c.startswith("model.")]
        for model, group in runs.groupby("model", sort=False):
            varying = [
                c
                for c in param_columns
                if any(sub[c].dropna().astype(str).nunique() > 1 for _, sub in group.groupby("dataset"))
            ]
            categorical = [c for c in varying if not _is_numeric(group[c])]
            determined = [
                c
                for c in varying
                if c not in categorical
                and categorical
                and group.groupby([group[k].astype(str) for k in categorical])[c].nunique().max() <= 1
            ]
            swept = [c for c in varying if c not in categorical and c not in determined]
            for index, row in group.iterrows():
                if categorical:
                    identity = ", ".join(f"{_short_param(c)}={format_value(row[c])}" for c in categorical)
                    objective = f"{model} ({identity})"
                else:
                    objective = model
                objectives[index] = objective
                hp_labels[index] = " ".join(f"{_short_param(c)}={format_value(row[c])}" for c in swept)
                if swept and pd.notna(row[swept[0]]):
                    hp_values[index] = float(row[swept[0]])
            for objective in objectives[group.index].unique():
                hyperparameters[objective] = swept
        runs["objective"] = objectives
        runs["hyperparameters"] = hp_labels
        runs["config"] = [f"{o} {h}".strip() for o, h in zip(objectives, hp_labels)]
        runs["hp_value"] = hp_values
        ordered = [c for c in IDENTITY_COLUMNS if c in runs.columns]
        runs = runs[ordered + [c for c in runs.columns if c not in ordered]]
        if incomplete is None:
            incomplete = pd.DataFrame(columns=["model", "dataset", "seed", "status", "run_key"])
        return cls(
            runs=runs,
            study=study,
            experiment=experiment,
            tracking_uri=tracking_uri,
            hyperparameters=hyperparameters,
            incomplete=incomplete,
            expected_runs=expected_runs,
            headlines=dict(headlines or {}),
            notes=list(notes),
        )

    # -- queries -------------------------------------------------------------
    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(self.runs["dataset"]))

    @property
    def objectives(self) -> list[str]:
        return list(dict.fromkeys(self.runs["objective"]))

    def hyperparameter_name(self, objective: str) -> str | None:
        """The first swept param of ``objective`` (``beta``), or None if nothing was swept."""
        swept = self.hyperparameters.get(objective) or []
        return _short_param(swept[0]) if swept else None

    def columns(self, prefix: str) -> list[str]:
        return [c for c in self.runs.columns if c.startswith(prefix) and self.runs[c].notna().any()]

    def representations(self) -> list[str]:
        found = [c.split("/")[1] for c in self.columns("eval/") + self.columns("downstream/") if c.count("/") >= 3]
        return list(dict.fromkeys(found))

    def score_columns(
        self, representation: str = "mean", metrics: Iterable[str] | None = None, exclude: Iterable[str] = ()
    ) -> list[str]:
        """The headline score of every metric on ``representation``: ``eval/<rep>/<metric>/<key>``.

        A metric's headline keys come from its plugin (``headline`` attribute of
        its factory); a metric the registry does not know contributes all its keys.
        """
        wanted = set(metrics) if metrics is not None else None
        excluded = set(exclude)
        out = []
        for column in self.columns(f"eval/{representation}/"):
            parts = column.split("/", 3)
            if len(parts) < 4:
                continue
            metric, key = parts[2], parts[3]
            if (wanted is not None and metric not in wanted) or metric in excluded:
                continue
            headline = self.headlines.get(metric)
            if headline and key not in headline:
                continue
            out.append(column)
        return out

    def downstream_columns(self, representation: str = "mean") -> list[str]:
        return self.columns(f"downstream/{representation}/")

    def train_columns(self) -> list[str]:
        return [c for c in self.columns(TRAIN_PREFIX) if c not in TRAIN_BOOKKEEPING]

    def label(self, column: str) -> str:
        """Short display name: ``mig`` for eval/mean/mig/discrete_mig when mig has one score here."""
        parts = column.split("/", 3)
        if column.startswith(TRAIN_PREFIX):
            return column[len(TRAIN_PREFIX) :]
        if len(parts) < 4:
            return column
        prefix, representation, name, key = parts
        siblings = [c for c in self.score_columns(representation) if c.split("/", 3)[2] == name]
        if prefix == "eval" and len(siblings) <= 1:
            return name
        return f"{name}:{key}"

    def subset(self, dataset: str):
        return self.runs[self.runs["dataset"] == dataset]


def _dataset_labels(runs) -> list[str]:
    """The dataset name, plus its params where one name was used with several param sets."""
    columns = [c for c in runs.columns if c.startswith("dataset.")]
    labels = list(runs["dataset"])
    for name, group in runs.groupby("dataset", sort=False):
        varying = [c for c in columns if group[c].dropna().astype(str).nunique() > 1]
        if not varying:
            continue
        for index, row in group.iterrows():
            extra = ", ".join(f"{_short_param(c)}={format_value(row[c])}" for c in varying)
            labels[runs.index.get_loc(index)] = f"{name} ({extra})"
    return labels


# ---------------------------------------------------------------------------
# loading from MLflow


def headlines_from_registry(registry: "PluginRegistry") -> dict[str, tuple[str, ...]]:
    """Each metric and task plugin's headline keys (the ``headline`` attribute of its factory)."""
    out: dict[str, tuple[str, ...]] = {}
    for kind in ("metric", "task"):
        for registration in registry.all(kind):
            headline = getattr(registration.factory, "headline", None)
            if headline:
                out[registration.name] = tuple(headline)
    return out


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
    config: "StudyConfig | None" = None,
    registry: "PluginRegistry | None" = None,
) -> StudyTable:
    """Read a study's runs from MLflow into a :class:`StudyTable`.

    With the study ``config`` the expected grid is known, so runs never started
    are listed as missing; without it, the last study invocation's ``num_runs``
    param gives the expected count. Raises ``LookupError`` if the experiment does
    not exist or holds no study runs.
    """
    import pandas as pd

    from disentbench.core.tracking import tracker as tracking
    from disentbench.core.registry import get_plugin_manager

    registry = registry or get_plugin_manager()
    tracker, experiment_id = tracking.open_existing(tracking_uri, experiment)
    if experiment_id is None:
        raise LookupError(f"no experiment named {experiment!r} in {tracking.resolve_tracking_uri(tracking_uri)}")
    children = tracker.search(f"tags.`{tracking.TAG_KIND}` = 'run'", experiment_id)
    parents = tracker.search(f"tags.`{tracking.TAG_KIND}` = 'study'", experiment_id)
    if not children and not parents and config is None:
        raise LookupError(f"experiment {experiment!r} in {tracker.uri} holds no disentbench study runs")

    by_key: dict[str, list] = {}
    for run in children:
        by_key.setdefault(run.data.tags.get(tracking.TAG_RUN_KEY) or run.info.run_id, []).append(run)
    finished_rows, unfinished = [], []
    for key, runs in by_key.items():
        done = [r for r in runs if r.info.status == tracking.FINISHED]
        if done:
            latest = max(done, key=lambda r: r.info.end_time or 0)
            finished_rows.append(_run_row(latest))
        else:
            row = _run_row(runs[0])
            unfinished.append(
                {"model": row["model"], "dataset": row["dataset"], "seed": row["seed"],
                 "status": tracking.status_of(runs).lower(), "run_key": key}
            )

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


# ---------------------------------------------------------------------------
# what a study lacks


def score_gaps(table: StudyTable) -> list[str]:
    """One line per score column that some finished runs have and others lack."""
    runs = table.runs
    total = len(runs)
    lines = []
    for column in [c for c in runs.columns if c.startswith(SCORE_PREFIXES)]:
        absent = int(runs[column].isna().sum())
        if 0 < absent:
            lines.append(f"{column}: absent in {absent} of {total} finished runs")
    return lines


# ---------------------------------------------------------------------------
# running analyses


def run_analyses(
    table: StudyTable,
    registry: "PluginRegistry | None" = None,
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
# shared numerics and plotting for analyses


def spearman(x, y, min_pairs: int = 3) -> float:
    """Spearman rank correlation over the pairs where both values are finite (average ranks for ties).

    NaN with fewer than ``min_pairs`` pairs or when one side is constant.
    """
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < min_pairs:
        return float("nan")
    x, y = rankdata(x[both]), rankdata(y[both])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def rank_correlation(frame, rows: list[str], columns: list[str], min_pairs: int = 3):
    """:func:`spearman` of every ``rows`` column with every ``columns`` column of ``frame`` (a DataFrame)."""
    import pandas as pd

    out = pd.DataFrame(np.nan, index=rows, columns=columns, dtype=float)
    for a in rows:
        for b in columns:
            out.loc[a, b] = spearman(frame[a], frame[b], min_pairs)
    return out


def constant_columns(frame, columns: list[str], labels=None) -> list[str]:
    """The (labels of the) columns that take a single value where present: no rank correlation exists."""
    labels = labels or columns
    return [label for column, label in zip(columns, labels) if frame[column].dropna().nunique() == 1]


def probability_greater(a, b) -> float:
    """P(A > B) for A drawn from ``a`` and B from ``b`` uniformly, ties counting one half."""
    a = np.asarray(a, dtype=float)[:, None]
    b = np.asarray(b, dtype=float)[None, :]
    return float(np.mean(a > b) + 0.5 * np.mean(a == b))


def new_figure(width: float, height: float) -> "Figure":
    """A matplotlib Figure not attached to pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, 60), min(height, 60)), layout="constrained")


def heatmap(ax, matrix, *, vmin: float = -1.0, vmax: float = 1.0, cmap: str = "RdBu_r", title: str = "", colorbar=True):
    """Draw a labelled, annotated heatmap of a DataFrame on ``ax``."""
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in matrix.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), [str(i) for i in matrix.index], fontsize=8)
    if values.size <= 400:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                colour = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
            else:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.5")
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.8)
    return image


def heatmap_figure(
    panels: dict[str, Any], title: str, *, vmin: float = -1.0, vmax: float = 1.0, cmap: str = "RdBu_r"
) -> "Figure":
    """One annotated heatmap per DataFrame in ``panels`` (panel title -> matrix), side by side,
    sized so that long row and column labels fit."""
    import textwrap

    matrices = list(panels.values())
    row_chars = max(len(str(label)) for m in matrices for label in m.index)
    column_chars = max(len(str(label)) for m in matrices for label in m.columns)
    rows = max(m.shape[0] for m in matrices)
    label_width = 0.3 + 0.075 * row_chars  # inches of y tick labels
    width = sum(label_width + 0.6 * m.shape[1] + 0.3 for m in matrices) + 1.2  # + colour bar
    height = 0.42 * rows + 0.055 * column_chars + 1.3
    figure = new_figure(max(width, 4.5), max(height, 3.0))
    axes = np.atleast_1d(figure.subplots(1, len(panels), width_ratios=[label_width + 0.6 * m.shape[1] for m in matrices]))
    for ax, (panel, matrix) in zip(axes, panels.items()):
        heatmap(ax, matrix, vmin=vmin, vmax=vmax, cmap=cmap, title=panel, colorbar=ax is axes[-1])
    figure.suptitle("\n".join(textwrap.wrap(title, width=max(40, int(width * 9)))), fontsize=10)
    return figure


def describe_range(series, fmt: str = "{:.2f}") -> str:
    """'median M (from MIN, a, to MAX, b)' for a Series of numbers indexed by names."""
    series = series.dropna()
    if series.empty:
        return "no value"
    low, high = series.idxmin(), series.idxmax()
    return (
        f"median {fmt.format(series.median())} (from {fmt.format(series[low])}, {low}, "
        f"to {fmt.format(series[high])}, {high})"
    )


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
    overview: list[tuple[str, str]] = (),
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

    done = [o for o in outcomes if o.result is not None]
    toc = [f'<li><a href="#{_slug(o.name)}">{html.escape(o.result.title)}</a></li>' for o in done]
    toc.append('<li><a href="#missing">Missing</a></li>')
    body.append(f"<ul>{''.join(toc)}</ul>")

    summary_lines: list[str] = []
    for outcome in done:
        result = outcome.result
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
    registry: "PluginRegistry | None" = None,
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
