"""The study-at-a-glance plot on a study's parent run: headline scores per model and hyperparameter.

One panel per headline score; along x one group per (model, swept
hyperparameters) setting, each run a dot (coloured by dataset, spread a little
sideways so seeds do not hide each other; a sample of ``MAX_POINTS`` per
setting beyond that) and the setting's median over all its runs a black bar.
A matplotlib ``Figure`` on the Agg canvas, never pyplot. Built from plain
lists, so it costs one pass over the runs: it is redrawn as a study's runs
finish.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

MAX_PANELS = 12  # headline scores drawn; scores.csv has them all
MAX_POINTS = 150  # dots drawn per setting and panel (a sample beyond that; the median is of all runs)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def scores_figure(
    groups: Sequence[str],
    datasets: Sequence[str],
    scores: Mapping[str, Sequence[float]],
    *,
    title: str = "",
    max_panels: int = MAX_PANELS,
    max_points: int = MAX_POINTS,
):
    """Headline scores per setting: ``groups[i]``/``datasets[i]`` name run ``i``, ``scores[key][i]`` its score.

    A missing score is NaN (the run is not finished, or failed). Returns the
    Figure; with no score at all it says so in its one panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = list(dict.fromkeys(groups))
    position = {g: i for i, g in enumerate(order)}
    x = np.array([position[g] for g in groups], dtype=float)
    random = np.random.RandomState(0)
    jitter = (random.rand(len(groups)) - 0.5) * 0.5
    shown = np.zeros(len(groups), dtype=bool)  # dots: at most max_points per setting (the medians use every run)
    for g in range(len(order)):
        members = np.flatnonzero(x == g)
        shown[members if members.size <= max_points else random.choice(members, max_points, replace=False)] = True
    names = list(dict.fromkeys(datasets))
    lookup = {name: i for i, name in enumerate(names)}
    dataset_index = np.array([lookup[ds] for ds in datasets], dtype=int)
    keys = [k for k in scores if np.isfinite(np.asarray(scores[k], dtype=float)).any()]
    hidden = max(0, len(keys) - max_panels)
    keys = keys[:max_panels]
    cols = 1 if len(keys) <= 2 else 2
    rows = max(1, math.ceil(len(keys) / cols))
    width = min(40.0, max(6.0, 1.5 + 0.35 * len(order)) * cols)
    figure = Figure(figsize=(width, 1.0 + 3.0 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    suptitle = title + (f"  ({hidden} more headline scores in scores.csv)" if hidden else "")
    if suptitle:
        figure.suptitle(suptitle, fontsize=11, x=0.01, ha="left")
    if not keys:
        axes = figure.add_subplot(1, 1, 1)
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no scores recorded yet", ha="center", va="center",
                  transform=axes.transAxes)
        return figure
    for panel, key in enumerate(keys):
        axes = figure.add_subplot(rows, cols, panel + 1)
        values = np.asarray(scores[key], dtype=float)
        finite = np.isfinite(values)
        for d, name in enumerate(names):
            chosen = finite & shown & (dataset_index == d)
            if chosen.any():
                axes.scatter(x[chosen] + jitter[chosen], values[chosen], s=12, alpha=0.7,
                             color=COLORS[d % len(COLORS)], label=name, linewidths=0)
        for g in range(len(order)):
            inside = values[finite & (x == g)]
            if inside.size:
                axes.hlines(float(np.median(inside)), g - 0.3, g + 0.3, color="black", linewidth=1.5)
        axes.set_title(key, fontsize=9, loc="left")
        axes.set_xticks(range(len(order)), order, rotation=35, ha="right", fontsize=8)
        axes.set_xlim(-0.6, len(order) - 0.4)
        axes.tick_params(axis="y", labelsize=8)
        axes.grid(axis="y", alpha=0.3)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
        if panel == 0 and names:  # one legend for all panels, beside them
            figure.legend(*axes.get_legend_handles_labels(), title="dataset", fontsize=8, title_fontsize=8,
                          loc="outside right upper", frameon=False)
    return figure
