"""``disentbench compare``: a study's finished runs side by side with their main scores.

The main scores are each metric's and task's headline keys (the ``headline``
attribute of its scorer), read from MLflow metrics ``eval/<rep>/<metric>/<key>``
and ``downstream/<rep>/<task>/<key>``. Output is a rich table on the terminal,
or CSV / JSON on stdout for scripts. Exit codes as everywhere: 0 success, 1 the
store failed, 2 bad input.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from disentbench.core.cli._common import (
    BadInput,
    global_options,
    plugin_registry,
    reading_study,
    study_target,
    term_width,
)

if TYPE_CHECKING:
    from disentbench.core.config.schema import StudyConfig
    from disentbench.core.registry import PluginRegistry

TEXT_COLUMNS = ("run", "model", "params", "dataset", "seed")
SCORE_PREFIXES = ("eval", "downstream")


@dataclass
class CompareRow:
    run_id: str
    run_name: str
    run_key: str
    model: str
    dataset: str
    seed: int
    params: dict[str, str]  # the params that vary between runs of this model (the swept ones)
    scores: dict[str, float]  # every eval/ and downstream/ metric of the run

    def text(self, column: str) -> str:
        if column == "run":
            return self.run_name
        if column == "params":
            return " ".join(f"{k}={v}" for k, v in self.params.items())
        return str(getattr(self, column))


@dataclass
class CompareTable:
    experiment: str
    tracking_uri: str
    rows: list[CompareRow]
    columns: list[str]  # full score keys shown, in order
    expected: int | None = None  # runs in the config's grid, when compared from a config
    notes: list[str] = field(default_factory=list)

    # -- labels -----------------------------------------------------------------
    def label(self, column: str) -> str:
        """``mig``; ``name:key`` where a scorer shows several keys; `` (sampled)`` where several representations."""
        _, representation, name, key = column.split("/", 3)
        siblings = {c.split("/", 3)[3] for c in self.columns if c.split("/", 3)[2] == name}
        text = name if len(siblings) <= 1 else f"{name}:{key}"
        if len(self.representations) > 1:
            text += f" ({representation})"
        return text

    @property
    def representations(self) -> list[str]:
        return list(dict.fromkeys(c.split("/", 3)[1] for c in self.columns))

    # -- filtering and sorting ----------------------------------------------------
    def filter(
        self, models: Iterable[str] = (), datasets: Iterable[str] = (), representation: str | None = None
    ) -> CompareTable:
        models, datasets = set(models), set(datasets)
        rows = [
            r for r in self.rows if (not models or r.model in models) and (not datasets or r.dataset in datasets)
        ]
        columns = [c for c in self.columns if representation is None or c.split("/", 3)[1] == representation]
        return CompareTable(self.experiment, self.tracking_uri, rows, columns, self.expected, list(self.notes))

    def sort_keys(self) -> list[str]:
        """What ``--sort`` accepts: the text columns, each score's label and each full score key."""
        return list(TEXT_COLUMNS) + [self.label(c) for c in self.columns] + list(self.columns)

    def resolve_sort(self, key: str) -> str:
        """A text column name or a full score key for ``key``; raises KeyError listing the choices."""
        if key in TEXT_COLUMNS or key in self.columns:
            return key
        for column in self.columns:
            if key == self.label(column):
                return column
        lowered = key.lower()
        matches = [c for c in self.columns if self.label(c).lower().split(" (")[0] == lowered]
        matches = matches or [c for c in self.columns if c.split("/", 3)[2].lower() == lowered]
        if matches:  # a scorer's name: its first column, the mean representation first
            return matches[0]
        raise KeyError(key)

    def sorted(self, key: str | None, reverse: bool = False) -> CompareTable:
        """Scores best (highest) first, text A to Z; runs without the score last; ``reverse`` flips."""
        if key is None:
            rows = sorted(self.rows, key=lambda r: (r.model, r.dataset, _natural(r.params), r.seed))
        elif key in TEXT_COLUMNS:
            rows = sorted(self.rows, key=lambda r: (_natural_text(r.text(key)), r.run_name), reverse=reverse)
        else:
            present = [r for r in self.rows if _finite(r.scores.get(key))]
            absent = [r for r in self.rows if not _finite(r.scores.get(key))]
            rows = sorted(present, key=lambda r: r.scores[key], reverse=not reverse) + absent
        return CompareTable(self.experiment, self.tracking_uri, rows, list(self.columns), self.expected, self.notes)

    # -- output -------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "run_id": r.run_id,
                "run_name": r.run_name,
                "run_key": r.run_key,
                "model": r.model,
                "dataset": r.dataset,
                "seed": r.seed,
                "params": r.params,
                "scores": {c: _json_number(r.scores.get(c)) for c in self.columns},
            }
            for r in self.rows
        ]

    def write_json(self, stream) -> None:
        json.dump(
            {"experiment": self.experiment, "tracking_uri": self.tracking_uri, "columns": self.columns,
             "runs": self.records()},
            stream,
            indent=2,
        )
        stream.write("\n")

    def write_csv(self, stream) -> None:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["run_id", "run_name", "model", "dataset", "seed", "params", *self.columns])
        for r in self.rows:
            values = ["" if not _finite(r.scores.get(c)) else repr(float(r.scores[c])) for c in self.columns]
            writer.writerow([r.run_id, r.run_name, r.model, r.dataset, r.seed, r.text("params"), *values])

    def header(self, column: str) -> str:
        """A score column's header on the terminal: the label on up to three short lines."""
        _, representation, name, key = column.split("/", 3)
        siblings = {c.split("/", 3)[3] for c in self.columns if c.split("/", 3)[2] == name}
        lines = [name] + ([key] if len(siblings) > 1 else [])
        if len(self.representations) > 1:
            lines.append(f"({representation})")
        return "\n".join(lines)

    def rich_table(self, sort_column: str | None = None, reverse: bool = False):
        """The terminal table: model, params, dataset, seed (the run name is made of them), then the scores."""
        from rich.markup import escape
        from rich.table import Table

        title = f"{self.experiment}: {len(self.rows)} finished run(s)"
        if self.expected is not None:
            title += f" of {self.expected} in the grid"
        table = Table(title=escape(title), box=None, pad_edge=False, header_style="bold")
        shown = [c for c in TEXT_COLUMNS if c != "run"]
        arrow = " ▴" if reverse else " ▾"  # the direction of the sort: ▾ descending scores / A to Z, ▴ reversed
        for name in shown:
            marker = arrow if name == sort_column else ""
            longest = max([len(name + marker)] + [len(r.text(name)) for r in self.rows])
            wrap = name == "params"
            table.add_column(name + marker, no_wrap=not wrap, min_width=None if wrap else longest, overflow="fold")
        best = {c: max((r.scores[c] for r in self.rows if _finite(r.scores.get(c))), default=None) for c in self.columns}
        for column in self.columns:
            marker = arrow if column == sort_column else ""
            table.add_column(escape(self.header(column)) + marker, justify="right", overflow="fold", min_width=6)
        for r in self.rows:
            cells = []
            for column in self.columns:
                value = r.scores.get(column)
                if value is None:
                    cells.append("-")
                elif not _finite(value):
                    cells.append(str(value))
                else:
                    text = f"{value:.3f}"
                    cells.append(f"[bold]{text}[/bold]" if len(self.rows) > 1 and value == best[column] else text)
            table.add_row(*(escape(r.text(c)) for c in shown), *cells)
        return table


# ---------------------------------------------------------------------------
# loading


def load_compare_table(
    tracking_uri: str | None,
    experiment: str,
    *,
    config: StudyConfig | None = None,
    registry: PluginRegistry | None = None,
) -> CompareTable:
    """The finished runs of a study's experiment with their headline score columns.

    With the study ``config``, only runs of its grid are shown and headline keys
    come from its scorers; without it, from the evaluation settings the latest
    study invocation recorded (its ``config`` param), else each plugin's
    defaults. Raises ``LookupError`` when the experiment does not exist.
    """
    from disentbench.core.registry import get_plugin_manager
    from disentbench.core.tracking import tracker as tracking

    registry = registry or get_plugin_manager()
    tracker, experiment_id = tracking.open_existing(tracking_uri, experiment)
    if experiment_id is None:
        raise LookupError(f"no experiment named {experiment!r} in {tracking.resolve_tracking_uri(tracking_uri)}")
    if tracker is None:  # open_existing gives a tracker whenever it gives an experiment id
        raise RuntimeError("no tracker for an existing experiment")
    children = tracker.search(f"tags.`{tracking.TAG_KIND}` = 'run'", experiment_id)

    swept_by_key: dict[str, dict[str, Any]] | None = None
    expected = None
    evaluation: dict[str, Any] | None = None
    if config is not None:
        from disentbench.core.config.grid import expand_grid

        specs = expand_grid(config, registry)
        expected = len(specs)
        swept_by_key = {s.run_key: s.swept for s in specs}
        evaluation = config.evaluation.model_dump(mode="json")
    else:
        recorded = _recorded_config(tracker, experiment_id)
        evaluation = recorded.get("evaluation") if isinstance(recorded.get("evaluation"), dict) else None

    latest: dict[str, Any] = {}
    for run in children:
        if run.info.status != tracking.FINISHED:
            continue
        key = run.data.tags.get(tracking.TAG_RUN_KEY) or run.info.run_id
        if swept_by_key is not None and key not in swept_by_key:
            continue
        if key not in latest or (run.info.end_time or 0) > (latest[key].info.end_time or 0):
            latest[key] = run
    from disentbench.core.analysis.loading import check_one_protocol

    check_one_protocol(latest.values(), experiment)

    rows = [_row(run, key, swept_by_key) for key, run in latest.items()]
    if swept_by_key is None:
        _fill_params(rows, latest, _swept_names(recorded))
    headlines = _headlines(evaluation, registry)
    columns = _score_columns(rows, headlines, evaluation)
    return CompareTable(experiment, tracker.uri, rows, columns, expected)


def _row(run, key: str, swept_by_key: dict[str, dict[str, Any]] | None) -> CompareRow:
    tags, params = run.data.tags, run.data.params
    try:
        seed = int(tags.get("seed", params.get("seed", 0)))
    except ValueError:
        seed = 0
    swept = {k: _short(v) for k, v in (swept_by_key or {}).get(key, {}).items()}
    return CompareRow(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        run_key=tags.get("run_key", ""),
        model=tags.get("model", params.get("model", "")),
        dataset=tags.get("dataset", params.get("dataset", "")),
        seed=seed,
        params=swept,
        scores={k: float(v) for k, v in run.data.metrics.items() if k.split("/", 1)[0] in SCORE_PREFIXES},
    )


def _fill_params(rows: list[CompareRow], runs: dict[str, Any], swept: dict[str, list[str]]) -> None:
    """Without a config: a run's params are its model's swept ones (from the recorded study config),
    else the ``model.*`` params that differ between runs of its model."""
    by_model: dict[str, list[tuple[CompareRow, dict[str, str]]]] = {}
    for row, run in zip(rows, runs.values()):
        model_params = {k[len("model.") :]: v for k, v in run.data.params.items() if k.startswith("model.")}
        by_model.setdefault(row.model, []).append((row, model_params))
    for model, group in by_model.items():
        names = sorted({name for _, params in group for name in params})
        chosen = [n for n in swept.get(model, []) if n in names]
        chosen = chosen or [n for n in names if len({params.get(n) for _, params in group}) > 1]
        for row, params in group:
            row.params = {n: _short(params[n]) for n in chosen if n in params}


def _recorded_config(tracker, experiment_id: str) -> dict[str, Any]:
    """The study config the latest study invocation recorded (its ``config`` param), if readable."""
    from disentbench.core.tracking import tracker as tracking

    parents = tracker.search(f"tags.`{tracking.TAG_KIND}` = 'study'", experiment_id)
    for run in sorted(parents, key=lambda r: r.info.start_time or 0, reverse=True):
        try:
            recorded = json.loads(run.data.params.get("config", ""))
        except ValueError:  # absent, or cut at MLflow's param length
            continue
        if isinstance(recorded, dict):
            return recorded
    return {}


def _swept_names(recorded: dict[str, Any]) -> dict[str, list[str]]:
    """Model name -> its swept param names, from a recorded study config."""
    out: dict[str, list[str]] = {}
    for entry in recorded.get("models") or []:
        if isinstance(entry, dict) and isinstance(entry.get("sweep"), dict):
            names = out.setdefault(str(entry.get("name")), [])
            names.extend(n for n in entry["sweep"] if n not in names)
    return out


def _refs(evaluation: dict[str, Any] | None, kind: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for ref in (evaluation or {}).get("metrics" if kind == "metric" else "tasks", []) or []:
        if isinstance(ref, str):
            out.append((ref, {}))
        elif isinstance(ref, dict) and "name" in ref:
            out.append((ref["name"], dict(ref.get("params") or {})))
    return out


def _headlines(evaluation: dict[str, Any] | None, registry: PluginRegistry) -> dict[str, tuple[str, ...]]:
    """Each scorer's headline keys: from the scorer built with the study's params, else the plugin's defaults."""
    out: dict[str, tuple[str, ...]] = {}
    configured = {("metric", n): p for n, p in _refs(evaluation, "metric")}
    configured.update({("task", n): p for n, p in _refs(evaluation, "task")})
    for kind in ("metric", "task"):
        for registration in registry.all(kind):
            params = configured.get((kind, registration.name), {})
            headline = None
            try:  # scorers are cheap to build; a task's headline depends on its params
                headline = getattr(registration.factory(registration.make_config(params)), "headline", None)
            except Exception:
                headline = getattr(registration.factory, "headline", None)
            if headline:
                out[registration.name] = tuple(headline)
    return out


def _score_columns(
    rows: list[CompareRow], headlines: dict[str, tuple[str, ...]], evaluation: dict[str, Any] | None
) -> list[str]:
    """Headline columns present in any row: mean before sampled, metrics before tasks, in config order."""
    recorded = sorted({k for r in rows for k in r.scores if k.count("/") >= 3})
    order = [n for n, _ in _refs(evaluation, "metric")] + [n for n, _ in _refs(evaluation, "task")]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for key in recorded:
        prefix, representation, name, _ = key.split("/", 3)
        groups.setdefault((representation, prefix, name), []).append(key)
    columns = []

    def rank(group: tuple[str, str, str]):
        representation, prefix, name = group
        return (representation != "mean", representation, prefix != "eval",
                order.index(name) if name in order else len(order), name)

    for group in sorted(groups, key=rank):
        keys = groups[group]
        headline = headlines.get(group[2])
        prefix = f"{group[1]}/{group[0]}/{group[2]}/"
        chosen = [prefix + k for k in headline if prefix + k in keys] if headline else []
        columns.extend(chosen or keys)  # no headline recorded: every key of that scorer
    return columns


def _short(value: Any) -> str:
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    if text.lower() in ("true", "false", "nan", "inf", "-inf"):
        return text
    return str(int(number)) if number.is_integer() else f"{number:g}"


def _natural(params: dict[str, str]) -> tuple:
    return tuple((k, _natural_text(v)) for k, v in params.items())


def _natural_text(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        pass
    try:
        return (0, float(text.split("=", 1)[1].split()[0]), text) if "=" in text else (1, 0.0, text)
    except (ValueError, IndexError):
        return (1, 0.0, text)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _json_number(value: float | None):
    return value if _finite(value) else None


# ---------------------------------------------------------------------------
# the command


@click.command("compare")
@click.argument("target", metavar="CONFIG|EXPERIMENT")
@click.option("--sort", "sort_key", metavar="KEY",
              help="Sort by a score (label such as mig, 'mig (sampled)' or a full key eval/mean/mig/discrete_mig; "
                   "highest first) or by run, model, params, dataset, seed (A to Z).")
@click.option("--reverse", is_flag=True, help="Reverse the sort order.")
@click.option("--model", "models", multiple=True, metavar="M", help="Only runs of this model (repeatable).")
@click.option("--dataset", "datasets", multiple=True, metavar="D", help="Only runs on this dataset (repeatable).")
@click.option("--representation", type=click.Choice(["mean", "sampled"]), help="Only scores of this representation.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout (full score keys as columns).")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.option("--tracking-uri", help="The MLflow store (default: the config's, $MLFLOW_TRACKING_URI, or ./mlflow.db).")
@click.pass_context
def compare_cmd(ctx, target, sort_key, reverse, models, datasets, representation, as_csv, as_json, tracking_uri):
    """Compare a study's finished runs: one row per run, its main scores as columns.

    CONFIG|EXPERIMENT is a study config file (only its grid's runs are shown)
    or the name of an MLflow experiment. The score columns are each metric's
    and downstream task's headline scores; the best value of each column is
    bold. Finished runs only (`disentbench status CONFIG` shows the others).

    \b
    Example:
      disentbench compare examples/quickstart.yaml
      disentbench compare quickstart --sort mig --model beta_vae
      disentbench compare study_v1_dsprites_small --representation sampled --sort dci
      disentbench compare quickstart --csv > scores.csv
      disentbench compare quickstart --json | jq '.runs[0]'
    """
    from disentbench.core.tracking.tracker import quiet_mlflow_logs

    if as_csv and as_json:
        raise BadInput("choose one of --csv and --json")
    import mlflow  # noqa: F401  (importing mlflow sets its loggers to INFO; quieten them after)

    quiet_mlflow_logs()
    registry = plugin_registry()
    config, experiment, tracking_uri = study_target(target, tracking_uri)
    with reading_study():
        table = load_compare_table(tracking_uri, experiment, config=config, registry=registry)

    known_models = sorted({r.model for r in table.rows})
    known_datasets = sorted({r.dataset for r in table.rows})
    for option, kind, wanted, known in (("--model", "model", models, known_models), ("--dataset", "dataset", datasets, known_datasets)):
        # a name neither recorded nor a plugin is a typo (a plugin without runs just matches nothing)
        kind_plugins = registry.plugins.get(kind, {})
        unknown = [w for w in wanted if w not in known and w not in kind_plugins]
        if unknown:
            names = known or registry.names(kind)
            raise BadInput(f"{option} {', '.join(unknown)}: no such {kind}; known: {', '.join(names)}")
    table = table.filter(models, datasets, representation)
    sort_column = None
    if sort_key is not None:
        try:
            sort_column = table.resolve_sort(sort_key)
        except KeyError:
            choices = ", ".join(dict.fromkeys(table.sort_keys()[: len(TEXT_COLUMNS) + len(table.columns)]))
            raise BadInput(f"--sort {sort_key!r} is not a column; use one of: {choices}") from None
    table = table.sorted(sort_column, reverse=reverse)

    if as_json:
        table.write_json(sys.stdout)
        return
    if as_csv:
        table.write_csv(sys.stdout)
        return
    from rich.console import Console

    quiet = global_options(ctx)["quiet"]
    if not table.rows:
        click.echo(f"No finished runs in experiment '{experiment}' ({table.tracking_uri}) match.", err=True)
        for option, wanted, known in (("--model", models, known_models), ("--dataset", datasets, known_datasets)):
            unknown = [w for w in wanted if w not in known]
            if unknown and known:
                click.echo(f"  {option} {', '.join(unknown)}: none recorded; known: {', '.join(known)}", err=True)
        return
    Console(width=max(120, term_width())).print(table.rich_table(sort_column, reverse=reverse))
    if not quiet:
        click.echo(f"MLflow: experiment '{experiment}' in {table.tracking_uri} (disentbench ui to browse)")
