"""Seeds vs hyperparameters vs objective: where the spread of scores comes from.

The paper's score distributions per model and hyperparameter (spec section 5,
analysis 3; claim c4: "the choice of hyperparameters and the random seed seems
to be substantially more important than the choice of objective function").
Per dataset and metric:

* violins of the scores of each configuration (objective x hyperparameter value)
  over its seeds;
* a nested decomposition of the score variance (sums of squares around the
  grand mean, objective means and configuration means):
  SS_total = SS_objective + SS_hyperparameter-within-objective + SS_seed,
  each reported as its share of SS_total;
* the probability that a random seed of the worse of two configurations
  (lower mean score) beats a random seed of the better one, averaged over all
  pairs of configurations with different means (ties count one half).
"""

from __future__ import annotations

from pydantic import Field

from disentbench import hookimpl
from disentbench.core.analysis.contract import AnalysisConfig, AnalysisResult, AnalysisSkipped, metric_columns
from disentbench.core.analysis.plots import new_figure
from disentbench.core.analysis.stats import probability_greater
from disentbench.core.analysis.table import StudyTable


class SeedsVsHyperparametersConfig(AnalysisConfig):
    min_seeds: int = Field(2, ge=2, description="A configuration needs this many seeds to count in the seed share.")


def variance_shares(frame, score: str) -> dict[str, float]:
    """Shares of the score's sum of squares explained by objective, hyperparameter within objective, and seed.

    ``frame`` has columns ``objective``, ``config`` and ``score``; the shares sum to 1.
    """
    values = frame[score]
    grand = values.mean()
    objective_mean = frame.groupby("objective")[score].transform("mean")
    config_mean = frame.groupby("config")[score].transform("mean")
    total = float(((values - grand) ** 2).sum())
    if total <= 0:
        return {"objective": float("nan"), "hyperparameter": float("nan"), "seed": float("nan")}
    return {
        "objective": float(((objective_mean - grand) ** 2).sum() / total),
        "hyperparameter": float(((config_mean - objective_mean) ** 2).sum() / total),
        "seed": float(((values - config_mean) ** 2).sum() / total),
    }


def worse_beats_better(frame, score: str, within_objective: bool = False) -> float:
    """P(random seed of the worse configuration > random seed of the better), over configuration pairs."""
    import numpy as np

    groups = [(objective, config, sub[score].to_numpy(float)) for (objective, config), sub in frame.groupby(["objective", "config"])]
    probabilities = []
    for i, (objective_a, _, a) in enumerate(groups):
        for objective_b, _, b in groups[i + 1 :]:
            if within_objective and objective_a != objective_b:
                continue
            if a.mean() == b.mean():
                continue
            worse, better = (a, b) if a.mean() < b.mean() else (b, a)
            probabilities.append(probability_greater(worse, better))
    return float(np.mean(probabilities)) if probabilities else float("nan")


class SeedsVsHyperparameters:
    name = "seeds_vs_hyperparameters"
    description = (
        "Score violins per configuration; variance share of objective, hyperparameter and seed; "
        "P(a worse configuration's seed beats a better one's)"
    )
    config_class = SeedsVsHyperparametersConfig

    def __init__(self, config: SeedsVsHyperparametersConfig | None = None):
        self.config = config or SeedsVsHyperparametersConfig()

    def run(self, table: StudyTable) -> AnalysisResult:
        import numpy as np
        import pandas as pd

        config = self.config
        columns = metric_columns(table, config)
        if not columns:
            raise AnalysisSkipped(f"no metric scores on the {config.representation} representation")
        result = AnalysisResult(title="Seeds vs hyperparameters vs objective")
        rows = []
        plotted: dict[str, list[str]] = {}
        for dataset in table.datasets:
            runs = table.subset(dataset)
            for column in columns:
                frame = runs[["objective", "config", "hp_value", "seed", column]].dropna(subset=[column])
                seeds = frame.groupby("config")["seed"].nunique()
                if frame.empty:
                    continue
                plotted.setdefault(dataset, []).append(column)
                if (seeds >= config.min_seeds).sum() == 0 or frame["config"].nunique() < 2:
                    result.notes.append(
                        f"{dataset} / {table.label(column)}: needs two configurations and one with "
                        f"{config.min_seeds}+ seeds for the variance shares"
                    )
                    continue
                shares = variance_shares(frame, column)
                rows.append(
                    {
                        "dataset": dataset,
                        "metric": table.label(column),
                        "runs": len(frame),
                        "configurations": frame["config"].nunique(),
                        "share_objective": shares["objective"],
                        "share_hyperparameter": shares["hyperparameter"],
                        "share_seed": shares["seed"],
                        "p_worse_beats_better": worse_beats_better(frame, column),
                        "p_worse_beats_better_same_objective": worse_beats_better(frame, column, within_objective=True),
                    }
                )
        if not plotted:
            raise AnalysisSkipped("no dataset has scores to plot")
        shares = pd.DataFrame(rows)
        if not shares.empty:
            result.tables["Share of score variance by source, and P(worse configuration's seed beats better's)"] = (
                shares.set_index(["dataset", "metric"])
            )
            for dataset, sub in shares.groupby("dataset", sort=False):
                mean = sub[["share_objective", "share_hyperparameter", "share_seed", "p_worse_beats_better"]].mean()
                seed_low = sub.loc[sub["share_seed"].idxmin()]
                seed_high = sub.loc[sub["share_seed"].idxmax()]
                within = sub["p_worse_beats_better_same_objective"].mean()
                within_text = (
                    f" and, within one objective (hyperparameter values only), with probability {within:.2f}"
                    if np.isfinite(within)
                    else ""
                )
                result.paragraphs.append(
                    f"On {dataset}, averaged over {len(sub)} metric(s), the random seed explains "
                    f"{mean['share_seed']:.0%} of the score variance, the hyperparameter value within an objective "
                    f"{mean['share_hyperparameter']:.0%} and the objective {mean['share_objective']:.0%} "
                    f"(seed share from {seed_low['share_seed']:.0%} for {seed_low['metric']} to "
                    f"{seed_high['share_seed']:.0%} for {seed_high['metric']}). A random seed of the worse of two "
                    f"configurations beats a random seed of the better one with probability "
                    f"{mean['p_worse_beats_better']:.2f}{within_text}."
                )
                for key in ("share_objective", "share_hyperparameter", "share_seed", "p_worse_beats_better"):
                    result.numbers[f"{dataset}/{key}"] = float(mean[key])
                for _, row in sub.iterrows():
                    result.numbers[f"{dataset}/{row['metric']}/share_seed"] = float(row["share_seed"])
        for dataset, dataset_columns in plotted.items():
            result.figures[f"score distributions on {dataset}"] = _violins(table, dataset, dataset_columns)
        return result


def _violins(table: StudyTable, dataset: str, columns: list[str]):
    import numpy as np

    runs = table.subset(dataset)
    order = (
        runs[["objective", "hp_value", "config"]]
        .drop_duplicates("config")
        .assign(objective_rank=lambda f: f["objective"].map({o: i for i, o in enumerate(table.objectives)}))
        .sort_values(["objective_rank", "hp_value", "config"])
    )
    configs = list(order["config"])
    objective_of = dict(zip(order["config"], order["objective"]))
    colours = {o: f"C{i % 10}" for i, o in enumerate(table.objectives)}
    figure = new_figure(max(6.0, 0.32 * len(configs) + 2), 2.3 * len(columns) + 0.8)
    axes = np.atleast_1d(figure.subplots(len(columns), 1, sharex=True))
    rng = np.random.default_rng(0)  # jitter only
    for ax, column in zip(axes, columns):
        for position, config in enumerate(configs):
            values = runs.loc[runs["config"] == config, column].dropna().to_numpy(float)
            if len(values) == 0:
                continue
            colour = colours[objective_of[config]]
            if len(np.unique(values)) >= 2:
                parts = ax.violinplot(values, positions=[position], widths=0.8, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                    body.set_alpha(0.35)
            ax.scatter(position + rng.uniform(-0.12, 0.12, len(values)), values, s=6, color=colour, zorder=3)
        ax.set_ylabel(table.label(column), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(configs)), configs, rotation=90, fontsize=7)
    figure.suptitle(f"Scores per configuration over seeds on {dataset} ({len(runs)} runs)")
    return figure


@hookimpl
def register_analyses(register):
    register(SeedsVsHyperparameters)
