"""Mean vs sampled representation: Gaussian total correlation against regularisation strength.

The paper's first analysis (spec section 5, analysis 1; claim c3: the sampled
representation's aggregate posterior is decorrelated, but the mean
representation's total correlation generally rises with regularisation). For
every objective with a swept hyperparameter (its first swept param is taken as
the regularisation strength, whatever its direction), per dataset: the score
``eval/<rep>/<metric>/gaussian_total_correlation`` of the mean and of the
sampled representation against that hyperparameter (median over seeds, seeds
as points), and the Spearman correlation of each with the hyperparameter.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from disentbench import hookimpl
from disentbench.core.analysis.contract import AnalysisConfig, AnalysisResult, AnalysisSkipped
from disentbench.core.analysis.plots import new_figure
from disentbench.core.analysis.stats import spearman
from disentbench.core.analysis.table import StudyTable, format_value


class MeanVsSampledConfig(AnalysisConfig):
    key: str = Field("gaussian_total_correlation", description="The score key compared across representations.")
    metric: str | None = Field(None, description="The metric reporting `key` (default: any metric that does).")
    representations: list[str] = Field(default_factory=lambda: ["mean", "sampled"], min_length=1)


class MeanVsSampled:
    name = "mean_vs_sampled"
    description = "Gaussian total correlation of the mean and sampled representations vs regularisation strength, per model"
    config_class = MeanVsSampledConfig

    def __init__(self, config: MeanVsSampledConfig | None = None):
        self.config = config or MeanVsSampledConfig()

    def _column(self, table: StudyTable, representation: str) -> str | None:
        found = [
            c
            for c in table.columns(f"eval/{representation}/")
            if c.count("/") >= 3
            and c.split("/", 3)[3] == self.config.key
            and (self.config.metric is None or c.split("/")[2] == self.config.metric)
        ]
        return found[0] if found else None

    def run(self, table: StudyTable) -> AnalysisResult:
        import numpy as np
        import pandas as pd

        config = self.config
        result = AnalysisResult(title=f"Mean vs sampled representation: {config.key.replace('_', ' ')}")
        columns = {}
        for representation in config.representations:
            column = self._column(table, representation)
            if column is None:
                result.notes.append(f"no {config.key} score on the {representation} representation")
            else:
                columns[representation] = column
        if not columns:
            raise AnalysisSkipped(
                f"no eval/<representation>/<metric>/{config.key} scores: score the runs with a metric that reports "
                f"{config.key} (the study's unsupervised scores)"
            )
        swept = [o for o in table.objectives if table.hyperparameter_name(o)]
        if not swept:
            raise AnalysisSkipped("no objective has a swept hyperparameter with two or more values")
        for objective in swept:
            if len(table.hyperparameters[objective]) > 1:
                result.notes.append(
                    f"{objective} sweeps {len(table.hyperparameters[objective])} params; plotted against the first "
                    f"({table.hyperparameter_name(objective)}), the others pooled"
                )
        rows = []
        for dataset in table.datasets:
            runs = table.subset(dataset)
            for objective in swept:
                sub = runs[runs["objective"] == objective]
                if sub["hp_value"].nunique() < 2:
                    continue
                row: dict[str, Any] = {"dataset": dataset, "objective": objective, "hyperparameter": table.hyperparameter_name(objective)}
                low, high = sub["hp_value"].min(), sub["hp_value"].max()
                row["lowest"], row["highest"] = low, high
                for representation, column in columns.items():
                    medians = sub.groupby("hp_value")[column].median()
                    row[f"spearman_{representation}"] = spearman(sub["hp_value"], sub[column])
                    row[f"{representation}_at_lowest"] = medians.get(low, np.nan)
                    row[f"{representation}_at_highest"] = medians.get(high, np.nan)
                rows.append(row)
        if not rows:
            raise AnalysisSkipped("no objective has runs at two or more hyperparameter values on one dataset")
        frame = pd.DataFrame(rows)
        result.tables[f"{config.key} against the swept hyperparameter (Spearman over runs; medians over seeds)"] = (
            frame.set_index(["dataset", "objective"])
        )
        for dataset, sub in frame.groupby("dataset", sort=False):
            parts = []
            for representation in columns:
                rho = sub[f"spearman_{representation}"]
                rising = sub.loc[rho > 0, "objective"].tolist()
                falling = sub.loc[rho < 0, "objective"].tolist()
                parts.append(
                    f"the {representation} representation's {config.key} rises with the hyperparameter for "
                    f"{len(rising)} of {len(sub)} objectives and falls for {len(falling)}"
                    + (f" ({', '.join(falling)})" if falling and len(falling) <= 3 else "")
                    + f" (median Spearman rho {rho.median():.2f})"
                )
                result.numbers[f"{dataset}/{representation}/median_spearman"] = float(rho.median())
                for _, row in sub.iterrows():
                    result.numbers[f"{dataset}/{row['objective']}/{representation}/spearman"] = float(row[f"spearman_{representation}"])
            examples = []
            for _, row in sub.head(2).iterrows():
                values = "; ".join(
                    f"{representation} {row[f'{representation}_at_lowest']:.3g} -> {row[f'{representation}_at_highest']:.3g}"
                    for representation in columns
                )
                examples.append(
                    f"{row['objective']}, {row['hyperparameter']} {format_value(row['lowest'])} -> "
                    f"{format_value(row['highest'])}: {values}"
                )
            result.paragraphs.append(f"On {dataset}, " + "; ".join(parts) + f". For example: {' | '.join(examples)}.")
        for dataset in frame["dataset"].unique():
            result.figures[f"{config.key} vs hyperparameter on {dataset}"] = self._figure(table, dataset, columns, frame)
        return result

    def _figure(self, table, dataset, columns, frame):
        import numpy as np

        objectives = list(frame.loc[frame["dataset"] == dataset, "objective"])
        runs = table.subset(dataset)
        width = min(len(objectives), 4)
        rows = -(-len(objectives) // width)
        figure = new_figure(3.4 * width, 2.8 * rows + 0.6)
        axes = np.atleast_1d(figure.subplots(rows, width, squeeze=False)).ravel()
        rng = np.random.default_rng(0)  # jitter only
        for ax, objective in zip(axes, objectives):
            sub = runs[runs["objective"] == objective]
            for index, (representation, column) in enumerate(columns.items()):
                medians = sub.groupby("hp_value")[column].median()
                colour = f"C{index}"
                x = sub["hp_value"].to_numpy(float)
                ax.scatter(x * (1 + rng.uniform(-0.03, 0.03, len(x))), sub[column], s=8, alpha=0.5, color=colour)
                ax.plot(medians.index, medians.to_numpy(), marker="o", color=colour, label=representation)
            values = sub["hp_value"].dropna()
            if (values > 0).all() and values.max() / values.min() >= 10:
                ax.set_xscale("log")
            ax.set_title(objective, fontsize=9)
            ax.set_xlabel(table.hyperparameter_name(objective), fontsize=8)
            ax.set_ylabel(self.config.key.replace("_", " "), fontsize=8)
            ax.legend(fontsize=7)
        for ax in axes[len(objectives):]:
            ax.set_visible(False)
        figure.suptitle(f"{self.config.key} vs the swept hyperparameter ({dataset})", fontsize=10)
        return figure


@hookimpl
def register_analyses(register):
    register(MeanVsSampled)
