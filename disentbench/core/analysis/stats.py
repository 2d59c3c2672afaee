"""The numerics analyses share: rank correlations that tolerate missing scores and constant columns,
the chance that one set of scores beats another, and the one-line summary of a range of numbers that
report paragraphs quote. Keeping them in one room means every analysis measures the same way; scipy
and pandas are imported inside the functions that need them, since plugin modules import this one
whenever the registry is built.
"""

from __future__ import annotations

import numpy as np


def spearman(x, y, min_pairs: int = 3) -> float:
    """Spearman rank correlation over the pairs where both values are finite (average ranks for ties).

    NaN with fewer than ``min_pairs`` pairs or when one side is constant.
    """
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < min_pairs:
        return float("nan")
    x, y = rankdata(x[both]), rankdata(y[both])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def rank_correlation(frame, rows: list[str], columns: list[str], min_pairs: int = 3):
    """:func:`spearman` of every ``rows`` column with every ``columns`` column of ``frame`` (a DataFrame)."""
    import pandas as pd

    out = pd.DataFrame(np.nan, index=rows, columns=columns, dtype=float)
    for a in rows:
        for b in columns:
            out.loc[a, b] = spearman(frame[a], frame[b], min_pairs)
    return out


def constant_columns(frame, columns: list[str], labels=None) -> list[str]:
    """The (labels of the) columns that take a single value where present: no rank correlation exists."""
    labels = labels or columns
    return [label for column, label in zip(columns, labels) if frame[column].dropna().nunique() == 1]


def probability_greater(a, b) -> float:
    """P(A > B) for A drawn from ``a`` and B from ``b`` uniformly, ties counting one half."""
    a = np.asarray(a, dtype=float)[:, None]
    b = np.asarray(b, dtype=float)[None, :]
    return float(np.mean(a > b) + 0.5 * np.mean(a == b))


def describe_range(series, fmt: str = "{:.2f}") -> str:
    """'median M (from MIN, a, to MAX, b)' for a Series of numbers indexed by names."""
    series = series.dropna()
    if series.empty:
        return "no value"
    low, high = series.idxmin(), series.idxmax()
    return (
        f"median {fmt.format(series.median())} (from {fmt.format(series[low])}, {low}, "
        f"to {fmt.format(series[high])}, {high})"
    )
