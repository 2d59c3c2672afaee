"""The contract between the analysis engine and its plugins: the config an analysis is built from, the
result it returns, the exception that says it cannot run, and the outcome the engine records for
each one. It sits apart from the table, the statistics and the report so that a third-party analysis
can see in one short module what it has to implement; it is imported whenever the plugin registry is
built (on every CLI call), so it pulls in nothing heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import Field

from disentbench.core.contracts import PluginConfig

if TYPE_CHECKING:  # pragma: no cover
    from disentbench.core.analysis.table import StudyTable


class AnalysisConfig(PluginConfig):
    """Base config of the built-in analyses (third-party ones may derive from it too)."""

    representation: str = Field("mean", description="Which representation's scores to analyse (study: mean).")
    metrics: list[str] | None = Field(
        None, description="Only these metric plugins (default: every metric the study recorded)."
    )
    exclude_metrics: list[str] = Field(default_factory=list, description="Metric plugins left out.")
    min_runs: int = Field(3, ge=2, description="Fewest runs (per dataset) a rank correlation is computed on.")


def metric_columns(table: StudyTable, config: AnalysisConfig) -> list[str]:
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

    def run(self, table: StudyTable) -> AnalysisResult: ...


@dataclass
class AnalysisOutcome:
    """One analysis of a report: its result, or why it was skipped, or how it failed."""

    name: str
    description: str = ""
    result: AnalysisResult | None = None
    skipped: str | None = None
    error: str | None = None
