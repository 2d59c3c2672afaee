"""Unsupervised model selection: do training-time scores predict the metrics?

The paper's rank correlation of unsupervised scores with the disentanglement
metrics (spec section 5, analysis 4; claim c5: "no clear pattern emerges").
Per dataset, across all finished runs: the Spearman rank correlation of each
unsupervised score with each metric's headline score. Unsupervised scores are
the last logged value of each training term (``train/<term>``: reconstruction,
KL, ELBO, and the estimated total correlation where a model logs one) and the
label-free scores of the representations (``eval/<rep>/<metric>/<key>`` for the
keys in ``eval_keys``, e.g. the Gaussian total correlation); the metrics those
come from are left out of the metric side.
"""

from __future__ import annotations

from pydantic import Field

from disentbench import hookimpl
from disentbench.core.analysis.contract import AnalysisConfig, AnalysisResult, AnalysisSkipped, metric_columns
from disentbench.core.analysis.plots import heatmap_figure
from disentbench.core.analysis.stats import constant_columns, describe_range, rank_correlation
from disentbench.core.analysis.table import StudyTable


class UnsupervisedSelectionConfig(AnalysisConfig):
    terms: list[str] = Field(
        default_factory=lambda: ["reconstruction", "kl", "elbo", "tc_estimate"],
        min_length=1,
        description="Training terms (train/<term>, last value) correlated with the metrics; absent ones are noted.",
    )
    eval_keys: list[str] = Field(
        default_factory=lambda: ["gaussian_total_correlation", "gaussian_wasserstein_correlation", "mutual_info_score"],
        description="Label-free representation scores (eval/<rep>/<metric>/<key>) also treated as unsupervised scores.",
    )


class UnsupervisedSelection:
    name = "unsupervised_selection"
    description = "Rank correlation of unsupervised scores (reconstruction, KL, ELBO, TC estimate, Gaussian TC) with each metric"
    config_class = UnsupervisedSelectionConfig

    def __init__(self, config: UnsupervisedSelectionConfig | None = None):
        self.config = config or UnsupervisedSelectionConfig()

    def run(self, table: StudyTable) -> AnalysisResult:
        import numpy as np
        import pandas as pd

        config = self.config
        result = AnalysisResult(title="Unsupervised model selection: unsupervised scores vs metrics")
        available = set(table.train_columns())
        terms = [f"train/{t}" for t in config.terms if f"train/{t}" in available]
        for term in config.terms:
            column = f"train/{term}"
            if column not in available:
                result.notes.append(f"no run logged {column}")
            elif table.runs[column].isna().any():
                present = int(table.runs[column].notna().sum())
                result.notes.append(
                    f"{column} is logged by {present} of {len(table.runs)} runs (only models that compute it); "
                    "its correlations use those runs"
                )
        unsupervised_eval = [
            c for c in table.columns("eval/") if c.count("/") >= 3 and c.split("/", 3)[3] in config.eval_keys
        ]
        if not terms and not unsupervised_eval:
            raise AnalysisSkipped(
                f"no unsupervised score: no training term among {', '.join(config.terms)} (train/<term>) and no "
                f"eval/<rep>/<metric>/<key> with a key among {', '.join(config.eval_keys)}"
            )
        label_free = {c.split("/")[2] for c in unsupervised_eval}
        metrics = [c for c in metric_columns(table, config) if c.split("/")[2] not in label_free]
        if not metrics:
            raise AnalysisSkipped(f"no metric scores on the {config.representation} representation")
        term_labels = [table.label(t) for t in terms]
        term_labels += [f"{c.split('/', 3)[3]} ({c.split('/')[1]})" for c in unsupervised_eval]
        terms = terms + unsupervised_eval
        metric_labels = [table.label(m) for m in metrics]
        matrices = {}
        for dataset in table.datasets:
            runs = table.subset(dataset)
            if len(runs) < config.min_runs:
                result.notes.append(f"{dataset}: {len(runs)} finished run(s), fewer than {config.min_runs}; not analysed")
                continue
            matrix = rank_correlation(runs, terms, metrics, config.min_runs)
            constant = constant_columns(runs, terms + metrics, term_labels + metric_labels)
            if constant:
                result.notes.append(f"{dataset}: {', '.join(constant)} take(s) one value in every run; no rank correlation")
            matrix.index, matrix.columns = term_labels, metric_labels
            flat = pd.Series(
                {f"{t} vs {m}": matrix.loc[t, m] for t in term_labels for m in metric_labels}
            ).dropna()
            if flat.empty:
                result.notes.append(f"{dataset}: no term/metric pair has {config.min_runs} runs with both")
                continue
            matrices[dataset] = matrix
            strongest = flat.abs().idxmax()
            result.paragraphs.append(
                f"On {dataset} ({len(runs)} runs), the rank correlation between an unsupervised score and a metric "
                f"has a {describe_range(flat)}; the strongest is {strongest} (rho = {flat[strongest]:.2f}), "
                f"and the median |rho| over the {len(flat)} pairs is {flat.abs().median():.2f}."
            )
            result.numbers[f"{dataset}/median_abs_spearman"] = float(flat.abs().median())
            result.numbers[f"{dataset}/max_abs_spearman"] = float(flat.abs().max())
            for term in term_labels:
                for metric in metric_labels:
                    if np.isfinite(matrix.loc[term, metric]):
                        result.numbers[f"{dataset}/{term}/{metric}"] = float(matrix.loc[term, metric])
            result.tables[f"Spearman rank correlation of unsupervised scores with metrics on {dataset}"] = matrix
        if not matrices:
            raise AnalysisSkipped("no dataset has enough finished runs with unsupervised and metric scores")
        result.figures["unsupervised scores vs metrics"] = heatmap_figure(
            matrices, "Spearman rank correlation: unsupervised scores (rows) vs metrics (columns)"
        )
        return result


@hookimpl
def register_analyses(register):
    register(UnsupervisedSelection)
