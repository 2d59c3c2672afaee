"""A study's finished runs as one tidy table, the shape every analysis reads. The table infers what was
swept and which objectives a study holds from the data alone (:meth:`StudyTable.from_frame`), so no
model, metric or dataset name is written into the engine, and it keeps beside the runs what the
study still lacks. It knows nothing of MLflow (see :mod:`disentbench.core.analysis.loading`), so a
test or a notebook can build one from any DataFrame; pandas is imported inside functions because
plugin modules import this one whenever the registry is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Columns every row of a study table has (besides params and scores).
IDENTITY_COLUMNS = ["run_id", "run_key", "model", "dataset", "seed", "objective", "hyperparameters", "config", "hp_value"]
SCORE_PREFIXES = ("eval/", "downstream/")
TRAIN_PREFIX = "train/"
#: train/ entries that are bookkeeping, not loss terms
TRAIN_BOOKKEEPING = ("train/seconds", "train/model_steps_per_second")


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
    ) -> StudyTable:
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
