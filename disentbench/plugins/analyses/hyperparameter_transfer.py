"""Hyperparameter transfer: does the best value on one dataset (or by one metric) help on another?

The paper's transfer analysis (spec section 5, analysis 5; claim c6:
"Unsupervised model selection remains an unsolved problem"). For each objective
with a swept hyperparameter:

1. on the source (dataset, metric), choose the value with the best median score
   over seeds;
2. on the target (dataset, metric), compute the probability that a random seed
   trained with that value beats a random seed trained with a value drawn
   uniformly from the swept ones (ties count one half; a perfect choice of the
   target's best value among n gives 1 - 1/(2n) when seeds do not overlap).

Pairs are (source dataset -> target dataset, same metric) and (source metric ->
target metric, same dataset); the probabilities are averaged over objectives and
over the metrics (resp. datasets). The diagonal (source = target) is the
in-sample reference. Also reported: how often the chosen value is the target's
own best.
"""

from __future__ import annotations

from pydantic import Field

from disentbench import hookimpl
from disentbench.core.analysis.contract import AnalysisConfig, AnalysisResult, AnalysisSkipped, metric_columns
from disentbench.core.analysis.plots import heatmap_figure
from disentbench.core.analysis.stats import probability_greater
from disentbench.core.analysis.table import StudyTable


class HyperparameterTransferConfig(AnalysisConfig):
    statistic: str = Field("median", pattern="^(median|mean)$", description="How seeds are pooled to pick the best value.")


def beats_random(values_by_hp: dict, chosen) -> float:
    """P(random seed at ``chosen`` > random seed at a uniformly random value), ties one half."""
    import numpy as np

    if chosen not in values_by_hp:
        return float("nan")
    return float(np.mean([probability_greater(values_by_hp[chosen], other) for other in values_by_hp.values()]))


class HyperparameterTransfer:
    name = "hyperparameter_transfer"
    description = "Best hyperparameter per model on one dataset/metric applied to another: P(it beats a random choice)"
    config_class = HyperparameterTransferConfig

    def __init__(self, config: HyperparameterTransferConfig | None = None):
        self.config = config or HyperparameterTransferConfig()

    def _cells(self, table: StudyTable, metrics: list[str]):
        """{(dataset, metric, objective): {hyperparameter values: scores over seeds}} for swept objectives.

        The inner dicts are ordered by the (first) hyperparameter's value, so ties go to the smallest.
        """
        cells = {}
        for dataset in table.datasets:
            runs = table.subset(dataset)
            for objective in table.objectives:
                sub = runs[runs["objective"] == objective]
                if sub["hyperparameters"].nunique() < 2:
                    continue
                for metric in metrics:
                    scores = sub[["hyperparameters", "hp_value", metric]].dropna(subset=[metric])
                    groups = sorted(scores.groupby("hyperparameters"), key=lambda item: (item[1]["hp_value"].min(), item[0]))
                    by_hp = {label: group[metric].to_numpy(float) for label, group in groups}
                    if len(by_hp) >= 2:
                        cells[(dataset, metric, objective)] = by_hp
        return cells

    def _best(self, by_hp: dict):
        import numpy as np

        pool = np.median if self.config.statistic == "median" else np.mean
        return max(by_hp, key=lambda label: pool(by_hp[label]))  # the first of equal maxima

    def run(self, table: StudyTable) -> AnalysisResult:
        import pandas as pd

        config = self.config
        metrics = metric_columns(table, config)
        if not metrics:
            raise AnalysisSkipped(f"no metric scores on the {config.representation} representation")
        cells = self._cells(table, metrics)
        if not cells:
            raise AnalysisSkipped("no objective has scores at two or more hyperparameter values")
        result = AnalysisResult(title="Hyperparameter transfer across datasets and metrics")
        labels = {m: table.label(m) for m in metrics}
        records = []
        for (source_dataset, source_metric, objective), source in cells.items():
            chosen = self._best(source)
            for (target_dataset, target_metric, target_objective), target in cells.items():
                if target_objective != objective:
                    continue
                same_dataset = target_dataset == source_dataset
                same_metric = target_metric == source_metric
                if not (same_dataset or same_metric):
                    continue
                records.append(
                    {
                        "objective": objective,
                        "source_dataset": source_dataset,
                        "target_dataset": target_dataset,
                        "source_metric": labels[source_metric],
                        "target_metric": labels[target_metric],
                        "chosen": chosen,
                        "target_best": self._best(target),
                        "p_beats_random": beats_random(target, chosen),
                    }
                )
        frame = pd.DataFrame(records).dropna(subset=["p_beats_random"])
        frame["is_target_best"] = frame["chosen"] == frame["target_best"]
        across_datasets = frame[frame["source_metric"] == frame["target_metric"]]
        across_metrics = frame[frame["source_dataset"] == frame["target_dataset"]]
        figures = []

        datasets_off = across_datasets[across_datasets["source_dataset"] != across_datasets["target_dataset"]]
        if datasets_off.empty:
            result.notes.append("transfer across datasets needs scores on two or more datasets")
        else:
            p = datasets_off["p_beats_random"].mean()
            per_pair = datasets_off.groupby(["source_dataset", "target_dataset"])["p_beats_random"].mean()
            result.paragraphs.append(
                f"Choosing each objective's hyperparameter value by its {config.statistic} score on one dataset and "
                f"using it on another beats a random choice of value with probability {p:.2f} on average over "
                f"{len(datasets_off)} (source, target, metric, objective) cases (per dataset pair from "
                f"{per_pair.min():.2f} to {per_pair.max():.2f}); the transferred value is the target dataset's own "
                f"best in {datasets_off['is_target_best'].mean():.0%} of cases."
            )
            result.numbers["across_datasets/p_beats_random"] = float(p)
            result.numbers["across_datasets/is_target_best"] = float(datasets_off["is_target_best"].mean())
        matrix = across_datasets.pivot_table(index="source_dataset", columns="target_dataset", values="p_beats_random", aggfunc="mean")
        if not matrix.empty:
            result.tables["P(transferred value beats a random value), source dataset (rows) -> target dataset, averaged over metrics and objectives"] = matrix
            figures.append(("source dataset -> target dataset", matrix))

        metrics_off = across_metrics[across_metrics["source_metric"] != across_metrics["target_metric"]]
        if metrics_off.empty:
            result.notes.append("transfer across metrics needs two or more metrics")
        else:
            p = metrics_off["p_beats_random"].mean()
            per_pair = metrics_off.groupby(["source_metric", "target_metric"])["p_beats_random"].mean()
            low, high = per_pair.idxmin(), per_pair.idxmax()
            result.paragraphs.append(
                f"Choosing the value by one metric and judging it by another (same dataset) beats a random choice "
                f"with probability {p:.2f} on average over {len(metrics_off)} cases (from {per_pair[low]:.2f}, "
                f"{low[0]} -> {low[1]}, to {per_pair[high]:.2f}, {high[0]} -> {high[1]}); the chosen value is the "
                f"other metric's best in {metrics_off['is_target_best'].mean():.0%} of cases."
            )
            result.numbers["across_metrics/p_beats_random"] = float(p)
            result.numbers["across_metrics/is_target_best"] = float(metrics_off["is_target_best"].mean())
        matrix = across_metrics.pivot_table(index="source_metric", columns="target_metric", values="p_beats_random", aggfunc="mean")
        if not matrix.empty and matrix.shape[0] > 1:
            result.tables["P(value chosen by one metric beats a random value by another), source metric (rows) -> target metric, averaged over datasets and objectives"] = matrix
            figures.append(("source metric -> target metric", matrix))

        in_sample = frame[(frame["source_dataset"] == frame["target_dataset"]) & (frame["source_metric"] == frame["target_metric"])]
        result.numbers["in_sample/p_beats_random"] = float(in_sample["p_beats_random"].mean())
        result.paragraphs.append(
            f"For reference, choosing and judging on the same dataset and metric (in-sample) gives "
            f"{in_sample['p_beats_random'].mean():.2f}."
        )
        if datasets_off.empty and metrics_off.empty:
            result.summary = f"only in-sample selection could be measured: {in_sample['p_beats_random'].mean():.2f}"
        per_objective = frame[(frame["source_dataset"] != frame["target_dataset"]) | (frame["source_metric"] != frame["target_metric"])]
        if not per_objective.empty:
            result.tables["P(beats a random value) per objective (off-diagonal cases)"] = (
                per_objective.groupby("objective")[["p_beats_random", "is_target_best"]].mean()
            )
        if figures:
            result.figures["hyperparameter transfer"] = heatmap_figure(
                dict(figures), "P(the transferred hyperparameter value beats a random one)", vmin=0, vmax=1, cmap="viridis"
            )
        return result


@hookimpl
def register_analyses(register):
    register(HyperparameterTransfer)
