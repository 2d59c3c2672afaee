"""Figure helpers for analyses: matplotlib Figures built without pyplot (no global state, no GUI
backend) and the annotated heatmaps most analyses draw, sized so that long labels fit. Drawing is
kept apart from the numbers so an analysis's findings can be computed and tested without a figure;
matplotlib is imported inside the functions, so importing this module (as every analysis plugin does
when the registry is built) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib Figure not attached to pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, 60), min(height, 60)), layout="constrained")


def heatmap(ax, matrix, *, vmin: float = -1.0, vmax: float = 1.0, cmap: str = "RdBu_r", title: str = "", colorbar=True):
    """Draw a labelled, annotated heatmap of a DataFrame on ``ax``."""
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in matrix.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), [str(i) for i in matrix.index], fontsize=8)
    if values.size <= 400:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                colour = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
            else:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.5")
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.8)
    return image


def heatmap_figure(
    panels: dict[str, Any], title: str, *, vmin: float = -1.0, vmax: float = 1.0, cmap: str = "RdBu_r"
) -> Figure:
    """One annotated heatmap per DataFrame in ``panels`` (panel title -> matrix), side by side,
    sized so that long row and column labels fit."""
    import textwrap

    matrices = list(panels.values())
    row_chars = max(len(str(label)) for m in matrices for label in m.index)
    column_chars = max(len(str(label)) for m in matrices for label in m.columns)
    rows = max(m.shape[0] for m in matrices)
    label_width = 0.3 + 0.075 * row_chars  # inches of y tick labels
    width = sum(label_width + 0.6 * m.shape[1] + 0.3 for m in matrices) + 1.2  # + colour bar
    height = 0.42 * rows + 0.055 * column_chars + 1.3
    figure = new_figure(max(width, 4.5), max(height, 3.0))
    axes = np.atleast_1d(figure.subplots(1, len(panels), width_ratios=[label_width + 0.6 * m.shape[1] for m in matrices]))
    for ax, (panel, matrix) in zip(axes, panels.items()):
        heatmap(ax, matrix, vmin=vmin, vmax=vmax, cmap=cmap, title=panel, colorbar=ax is axes[-1])
    figure.suptitle("\n".join(textwrap.wrap(title, width=max(40, int(width * 9)))), fontsize=10)
    return figure
