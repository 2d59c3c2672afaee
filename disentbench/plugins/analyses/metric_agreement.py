"""Metric agreement: Spearman rank correlation between every pair of metric scores, per dataset.

The paper's rank-correlation matrices between metrics (spec section 5, analysis 2):
across all finished runs of a dataset, on the mean representation, each pair of
metrics' headline scores is rank-correlated; a heatmap per dataset.
"""

from __future__ import annotations

from disentbench import hookimpl
from disentbench.core.analysis.contract import AnalysisConfig, AnalysisResult, AnalysisSkipped, metric_columns
from disentbench.core.analysis.plots import heatmap_figure
from disentbench.core.analysis.stats import constant_columns, describe_range, rank_correlation
from disentbench.core.analysis.table import StudyTable


class MetricAgreementConfig(AnalysisConfig):
    pass


class MetricAgreement:
    name = "metric_agreement"
    description = "Spearman rank correlation between every pair of metric scores, per dataset (heatmap)"
    config_class = MetricAgreementConfig

    def __init__(self, config: MetricAgreementConfig | None = None):
        self.config = config or MetricAgreementConfig()

    def run(self, table: StudyTable) -> AnalysisResult:
        import numpy as np
        import pandas as pd

        config = self.config
        columns = metric_columns(table, config)
        if len(columns) < 2:
            raise AnalysisSkipped(
                f"needs the scores of at least two metrics on the {config.representation} representation; "
                f"found {len(columns)}"
            )
        labels = [table.label(c) for c in columns]
        result = AnalysisResult(title="Agreement between metrics (Spearman rank correlation)")
        matrices = {}
        for dataset in table.datasets:
            runs = table.subset(dataset)
            if len(runs) < config.min_runs:
                result.notes.append(f"{dataset}: {len(runs)} finished run(s), fewer than {config.min_runs}; not analysed")
                continue
            matrix = rank_correlation(runs, columns, columns, config.min_runs)
            constant = constant_columns(runs, columns, labels)
            if constant:
                result.notes.append(f"{dataset}: {', '.join(constant)} take(s) one value in every run; no rank correlation")
            matrix.index, matrix.columns = labels, labels
            upper = np.triu(np.ones(matrix.shape, dtype=bool), k=1)
            pairs = pd.Series(
                {f"{a} vs {b}": matrix.loc[a, b] for (i, a) in enumerate(labels) for (j, b) in enumerate(labels) if upper[i, j]}
            ).dropna()
            if pairs.empty:
                result.notes.append(f"{dataset}: no pair of metrics has {config.min_runs} runs with both scores")
                continue
            matrices[dataset] = matrix
            result.paragraphs.append(
                f"On {dataset} ({len(runs)} runs, {config.representation} representation), the Spearman rank "
                f"correlation over the {len(pairs)} pair(s) of metrics has a {describe_range(pairs)}; "
                f"{int((pairs > 0.5).sum())} pair(s) agree strongly (rho > 0.5) and "
                f"{int((pairs < 0).sum())} disagree (rho < 0)."
            )
            result.numbers[f"{dataset}/median_spearman"] = float(pairs.median())
            result.numbers[f"{dataset}/min_spearman"] = float(pairs.min())
            result.numbers[f"{dataset}/max_spearman"] = float(pairs.max())
            result.tables[f"Spearman rank correlation between metrics on {dataset}"] = matrix
        if not matrices:
            raise AnalysisSkipped("no dataset has enough finished runs with two or more metric scores")
        result.figures["metric rank correlation per dataset"] = heatmap_figure(
            matrices, f"Spearman rank correlation between metrics ({config.representation} representation)"
        )
        return result


@hookimpl
def register_analyses(register):
    register(MetricAgreement)
