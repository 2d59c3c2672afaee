"""Downstream: does a better metric score mean better or more sample-efficient downstream learning?

The paper's downstream analysis (spec section 5, analysis 6; claim c7: no
reliable sample-efficiency gain from higher disentanglement). Per dataset and
downstream task: the Spearman rank correlation of each metric's headline score
with the task's test accuracy at its largest training size
(``downstream/<rep>/<task>/<n>:mean_test_accuracy``) and with its sample
efficiency (``.../sample_efficiency`` when the task logs it; otherwise the
ratio of the accuracy at ``efficiency_small`` training points to the accuracy at
the largest size, when both exist).
"""

from __future__ import annotations

import re

from pydantic import Field

from disentbench import hookimpl
from disentbench.core.analysis.contract import AnalysisConfig, AnalysisResult, AnalysisSkipped, metric_columns
from disentbench.core.analysis.plots import heatmap_figure
from disentbench.core.analysis.stats import constant_columns, describe_range, rank_correlation
from disentbench.core.analysis.table import StudyTable

_ACCURACY = re.compile(r"^(\d+):mean_test_accuracy$")


class DownstreamConfig(AnalysisConfig):
    efficiency_key: str = Field("sample_efficiency", description="A task's sample-efficiency key, if it logs one.")
    efficiency_small: int = Field(
        100, ge=1, description="Otherwise efficiency = accuracy at this many training points / at the largest size."
    )


class Downstream:
    name = "downstream"
    description = "Rank correlation of each metric with downstream accuracy and sample efficiency"
    config_class = DownstreamConfig

    def __init__(self, config: DownstreamConfig | None = None):
        self.config = config or DownstreamConfig()

    def _targets(self, table: StudyTable, result: AnalysisResult):
        """Per task: (label, column) for its accuracy and its efficiency; may add computed columns."""
        config = self.config
        runs = table.runs
        by_task: dict[str, dict[int, str]] = {}
        efficiency: dict[str, str] = {}
        for column in table.downstream_columns(config.representation):
            _, _, task, key = column.split("/", 3)
            match = _ACCURACY.match(key)
            if match:
                by_task.setdefault(task, {})[int(match.group(1))] = column
            elif key == config.efficiency_key:
                efficiency[task] = column
        targets = []
        computed = {}
        for task in sorted(set(by_task) | set(efficiency)):
            sizes = by_task.get(task, {})
            if sizes:
                largest = max(sizes)
                targets.append((f"{task} accuracy ({largest} points)", sizes[largest]))
            if task in efficiency:
                targets.append((f"{task} efficiency", efficiency[task]))
            elif sizes and config.efficiency_small in sizes and max(sizes) > config.efficiency_small:
                name = f"downstream/{config.representation}/{task}/computed_efficiency"
                computed[name] = runs[sizes[config.efficiency_small]] / runs[sizes[max(sizes)]]
                targets.append((f"{task} efficiency ({config.efficiency_small}/{max(sizes)})", name))
            else:
                result.notes.append(
                    f"{task}: no {config.efficiency_key} key and no accuracies at {config.efficiency_small} and a larger "
                    "training size; sample efficiency not analysed"
                )
        return targets, computed

    def run(self, table: StudyTable) -> AnalysisResult:
        config = self.config
        result = AnalysisResult(title="Disentanglement vs downstream accuracy and sample efficiency")
        targets, computed = self._targets(table, result)
        if not targets:
            raise AnalysisSkipped(
                f"no downstream/{config.representation}/<task>/<n>:mean_test_accuracy or {config.efficiency_key} "
                "scores: add a downstream task to the study's evaluation"
            )
        metrics = metric_columns(table, config)
        if not metrics:
            raise AnalysisSkipped(f"no metric scores on the {config.representation} representation")
        metric_labels = [table.label(m) for m in metrics]
        target_labels = [label for label, _ in targets]
        runs_all = table.runs.assign(**computed) if computed else table.runs
        matrices = {}
        for dataset in table.datasets:
            runs = runs_all[runs_all["dataset"] == dataset]
            if len(runs) < config.min_runs:
                result.notes.append(f"{dataset}: {len(runs)} finished run(s), fewer than {config.min_runs}; not analysed")
                continue
            matrix = rank_correlation(runs, metrics, [c for _, c in targets], config.min_runs)
            constant = constant_columns(runs, metrics + [c for _, c in targets], metric_labels + target_labels)
            if constant:
                result.notes.append(f"{dataset}: {', '.join(constant)} take(s) one value in every run; no rank correlation")
            matrix.index, matrix.columns = metric_labels, target_labels
            if matrix.isna().all().all():
                result.notes.append(f"{dataset}: no metric/downstream pair has {config.min_runs} runs with both")
                continue
            matrices[dataset] = matrix
            parts = []
            for label in target_labels:
                column = matrix[label].dropna()
                if column.empty:
                    continue
                parts.append(f"with {label} has a {describe_range(column)}")
                result.numbers[f"{dataset}/{label}/median_spearman"] = float(column.median())
                for metric, value in column.items():
                    result.numbers[f"{dataset}/{label}/{metric}"] = float(value)
            result.paragraphs.append(
                f"On {dataset} ({len(runs)} runs), the metrics' Spearman rank correlation "
                + "; ".join(parts)
                + "."
            )
            result.tables[f"Spearman rank correlation of metrics with downstream scores on {dataset}"] = matrix
        if not matrices:
            raise AnalysisSkipped("no dataset has enough finished runs with metric and downstream scores")
        result.figures["metrics vs downstream"] = heatmap_figure(
            matrices, "Spearman rank correlation: metrics (rows) vs downstream accuracy and efficiency (columns)"
        )
        return result


@hookimpl
def register_analyses(register):
    register(Downstream)
