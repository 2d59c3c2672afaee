"""Score spread: the analysis part of the example plugin.

For each metric, how much its headline score varies between the random seeds
of one configuration (same model, hyperparameters and dataset), averaged over
configurations: the noise floor a hyperparameter effect has to beat. An
analysis gets the study's table of finished runs and returns its findings as
paragraphs, tables and headline numbers (logged to MLflow with the report).
"""

from __future__ import annotations

from disentbench import AnalysisConfig, AnalysisResult, AnalysisSkipped, StudyTable


class ScoreSpreadConfig(AnalysisConfig):
    pass


class ScoreSpread:
    """``ScoreSpread(config).run(table)``: mean over configurations of the between-seed standard deviation."""

    name = "score_spread"
    description = "Between-seed standard deviation of each metric within a configuration (example plugin)"
    config_class = ScoreSpreadConfig

    def __init__(self, config: ScoreSpreadConfig | None = None):
        self.config = config if config is not None else ScoreSpreadConfig()

    def run(self, table: StudyTable) -> AnalysisResult:
        import pandas as pd

        columns = table.score_columns(self.config.representation, self.config.metrics, self.config.exclude_metrics)
        if not columns:
            raise AnalysisSkipped(f"no metric scores on the {self.config.representation} representation")
        runs = table.runs
        hyper = sorted({c for names in table.hyperparameters.values() for c in names if c in runs.columns})
        groups = runs.groupby(["model", "dataset", *hyper], dropna=False)
        spread = groups[columns].std(ddof=1).dropna(how="all")
        if spread.empty:
            raise AnalysisSkipped("no configuration was trained with two or more seeds")
        mean_spread = spread.mean()
        result = AnalysisResult(title="Between-seed spread of each metric")
        frame = pd.DataFrame({"mean between-seed std": mean_spread, "configurations": spread.count()})
        frame.index = [table.label(c) for c in frame.index]
        result.tables["Spread per metric"] = frame
        for column, value in mean_spread.items():
            result.numbers[table.label(column)] = float(value)
        widest = mean_spread.idxmax()
        result.paragraphs.append(
            f"Across {len(spread)} configuration(s) trained with several seeds, {table.label(widest)} varies most "
            f"between seeds (mean standard deviation {mean_spread[widest]:.3f})."
        )
        return result
