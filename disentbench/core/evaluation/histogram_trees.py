"""Fast mode's gradient-boosted trees: the study's trees with split points restricted to fine bins.

Exact mode grows every tree as scikit-learn does
(:mod:`~disentbench.core.evaluation.presorted_trees`); most of that time goes
to partitioning every feature's sorted order at every split. Fast mode
(``evaluation.fast``) promises scores within 0.02 of exact mode, not equal
ones, so :class:`HistogramGradientBoostingClassifier` grows the same model
(the log loss's ``GradientBoostingClassifier()``: 100 stages, learning rate
0.1, squared-error regression trees of depth 3 on the gradients, one Newton
step per leaf) with one change: a feature may split only between its bins.

* **Bins.** Per feature, the positions where scikit-learn may split (sorted
  values more than ``FEATURE_THRESHOLD`` apart, in float32) are the candidate
  cuts; with at most ``max_bins - 1`` of them every one is kept (the splits
  are then exactly scikit-learn's); otherwise ``max_bins - 1`` are kept at
  evenly spaced quantiles. A split's threshold is the midpoint of the node's
  values either side of its cut, as scikit-learn computes one.
* **Growth.** Level by level: one pass over each feature's bins per level
  sums the gradients of each node's samples per bin; the best split of a
  node is the largest of scikit-learn's proxy improvements over the cuts,
  features in index order (scikit-learn visits them in a random order, which
  only breaks exact ties). Nothing is sorted or partitioned per tree.
* **What stays scikit-learn's.** Leaves, node impurities and sample counts
  are computed as scikit-learn defines them, so ``feature_importances_`` (DCI's
  importance matrix) is the impurity importance of these trees, and the trees
  are ordinary ``sklearn.tree`` objects (``predict``, ``apply``, pickling).
  Each tree takes the one ``randint`` draw a scikit-learn tree takes, so
  random streams stay where exact mode leaves them.

The scores this moves, per metric, are measured in benchmarks/README.md and
bounded in tests/test_evaluation_modes.py.
"""

from __future__ import annotations

import numba
import numpy as np

from disentbench.core.evaluation.presorted_trees import PresortedGradientBoostingClassifier

#: Bins per feature (cuts + 1). 1,024 cuts keep every split scikit-learn could make on up to
#: 1,024 distinct values, and leave ~10 points per bin at the study's 10,000.
MAX_BINS = 1024


def bin_features(order: np.ndarray, xsorted: np.ndarray, max_bins: int = MAX_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, each sample's bin and the number of bins, from the presorted class's sorted features.

    ``order[f]`` is the samples sorted by feature f (stable) and ``xsorted[f]``
    their float32 values, as ``PresortedGradientBoostingClassifier`` keeps them.
    Returns ``bins`` ``(num_features, n)`` uint16 and ``counts`` ``(num_features,)``.
    """
    num_features, n = order.shape
    bins = np.empty((num_features, n), dtype=np.uint16)
    counts = np.empty(num_features, dtype=np.int64)
    threshold = np.float32(1e-7)  # scikit-learn's FEATURE_THRESHOLD, compared in float32 as it does
    positions = np.arange(n)
    for f in range(num_features):
        values = xsorted[f]
        cuts = np.flatnonzero(values[1:] > values[:-1] + threshold) + 1  # sorted positions that may start a right side
        if len(cuts) > max_bins - 1:
            targets = (np.arange(1, max_bins) * n) // max_bins
            cuts = np.unique(cuts[np.minimum(np.searchsorted(cuts, targets), len(cuts) - 1)])
        bins[f, order[f]] = np.searchsorted(cuts, positions, side="right").astype(np.uint16)
        counts[f] = len(cuts) + 1
    return bins, counts


@numba.njit(nogil=True, cache=True)
def _depth_first_ids(left, right, capacity):  # pragma: no cover - compiled
    """Each breadth-first node's id in scikit-learn's depth-first order (a node, its left subtree, its right; -1:
    unreachable), and the number of nodes reached."""
    dfs_of = np.full(capacity, -1, np.int64)
    stack = np.zeros(capacity + 1, np.int64)
    top = 1
    used = 0
    while top > 0:
        top -= 1
        a = stack[top]
        dfs_of[a] = used
        used += 1
        if left[a] >= 0:
            stack[top] = right[a]
            stack[top + 1] = left[a]
            top += 2
    return dfs_of, used


@numba.njit(nogil=True, cache=True)
def _permuted(records, dfs_of, fill):  # pragma: no cover - compiled
    """``records`` moved to their depth-first ids; unreached slots hold ``fill``."""
    out = np.full(len(records), fill, records.dtype)
    for a in range(len(records)):
        if dfs_of[a] >= 0:
            out[dfs_of[a]] = records[a]
    return out


@numba.njit(nogil=True, cache=True)
def build_tree_histogram(bins, values, counts, y, max_depth, friedman, reciprocal):  # pragma: no cover - compiled
    """One regression tree on targets ``y``, grown level by level on binned features.

    ``bins[f, i]`` is sample i's bin along feature f, ``values[f, i]`` its
    float32 value: a threshold is the midpoint of the node's values either
    side of the cut, as scikit-learn's.

    Returns what ``presorted_trees.build_tree`` returns, nodes in scikit-learn's
    depth-first order (status 0 always).
    """
    num_features, n = bins.shape
    capacity = 2 ** (max_depth + 1) - 1
    eps = 2.220446049250313e-16  # scikit-learn's EPSILON in the tree builder
    width = 2**max_depth
    num_bins = 1
    for f in range(num_features):
        num_bins = max(num_bins, counts[f])

    # breadth-first node records
    left_b = np.full(capacity, -1, np.int64)
    right_b = np.full(capacity, -1, np.int64)
    parent_b = np.full(capacity, -1, np.int64)
    feature_b = np.full(capacity, -2, np.int64)
    threshold_b = np.full(capacity, -2.0)
    impurity_b = np.zeros(capacity)
    value_b = np.zeros(capacity)
    samples_b = np.zeros(capacity, np.int64)
    missing_b = np.zeros(capacity, np.uint8)
    depth_b = np.zeros(capacity, np.int64)
    totals = np.zeros(capacity)
    squares = np.zeros(capacity)

    nid = np.zeros(n, np.int64)  # each sample's node (breadth-first id)
    sid = np.zeros(n, np.int64)  # its node's index among this level's splittable nodes, or -1
    slot = np.full(capacity, -1, np.int64)
    node_of = np.zeros(width, np.int64)
    node_total = np.zeros(width)
    node_count = np.zeros(width, np.int64)
    best = np.zeros(width)
    best_feature = np.zeros(width, np.int64)
    best_bin = np.zeros(width, np.int64)
    best_left = np.zeros(width, np.int64)
    left_high = np.zeros(width, np.float32)
    right_low = np.zeros(width, np.float32)
    histogram = np.zeros((width, num_bins))
    histogram_count = np.zeros((width, num_bins), np.int64)

    for i in range(n):
        v = y[i]
        totals[0] += v
        squares[0] += v * v
    samples_b[0] = n
    count = 1
    level_start = 0
    level_end = 1
    for depth in range(max_depth + 1):
        splittable = 0
        for a in range(level_start, level_end):
            m = samples_b[a]
            mean = totals[a] / m
            value_b[a] = mean
            impurity_b[a] = squares[a] / m - mean * mean
            depth_b[a] = depth
            slot[a] = -1
            if depth < max_depth and m >= 2 and impurity_b[a] > eps:
                slot[a] = splittable
                node_of[splittable] = a
                node_total[splittable] = totals[a]
                node_count[splittable] = m
                best[splittable] = -np.inf
                best_feature[splittable] = -1
                splittable += 1
        if splittable == 0:
            break
        for i in range(n):
            sid[i] = slot[nid[i]]
        for f in range(num_features):
            nb = counts[f]
            if nb < 2:
                continue  # constant feature
            for s in range(splittable):
                for b in range(nb):
                    histogram[s, b] = 0.0
                    histogram_count[s, b] = 0
            row = bins[f]
            for i in range(n):
                s = sid[i]
                if s >= 0:
                    b = row[i]
                    histogram[s, b] += y[i]
                    histogram_count[s, b] += 1
            for s in range(splittable):
                m = node_count[s]
                total = node_total[s]
                fm = float(m)
                left_sum = 0.0
                k = 0
                for b in range(nb - 1):
                    c = histogram_count[s, b]
                    if c == 0:
                        continue
                    k += c
                    left_sum += histogram[s, b]
                    if k >= m:
                        break
                    rest = total - left_sum
                    if friedman:
                        diff = (fm - k) * left_sum - k * rest
                        proxy = diff * diff * reciprocal[k] * reciprocal[m - k]
                    else:
                        proxy = left_sum * left_sum * reciprocal[k] + rest * rest * reciprocal[m - k]
                    if proxy > best[s]:
                        best[s] = proxy
                        best_feature[s] = f
                        best_bin[s] = b
                        best_left[s] = k
        # children: breadth-first ids, left then right
        first_child = count
        for s in range(splittable):
            a = node_of[s]
            if best_feature[s] < 0:
                slot[a] = -1  # constant in every feature here: a leaf
                continue
            left_b[a] = count
            right_b[a] = count + 1
            parent_b[count] = a
            parent_b[count + 1] = a
            feature_b[a] = best_feature[s]
            left_high[s] = -np.inf
            right_low[s] = np.inf
            m = samples_b[a]
            missing_b[a] = 1 if best_left[s] > m - best_left[s] else 0
            samples_b[count] = best_left[s]
            samples_b[count + 1] = m - best_left[s]
            for child in (count, count + 1):
                totals[child] = 0.0
                squares[child] = 0.0
            count += 2
        for i in range(n):
            s = sid[i]
            if s < 0 or best_feature[s] < 0:
                continue
            a = nid[i]
            f = best_feature[s]
            x = values[f, i]
            if bins[f, i] <= best_bin[s]:
                child = left_b[a]
                left_high[s] = max(left_high[s], x)
            else:
                child = right_b[a]
                right_low[s] = min(right_low[s], x)
            nid[i] = child
            v = y[i]
            totals[child] += v
            squares[child] += v * v
        for s in range(splittable):
            if best_feature[s] >= 0:
                threshold_b[node_of[s]] = np.float64(left_high[s]) / 2.0 + np.float64(right_low[s]) / 2.0
        if not friedman:  # scikit-learn's check that a split improves at all (squared error)
            undo = False
            for s in range(splittable):
                a = node_of[s]
                if best_feature[s] < 0:
                    continue
                fm = float(samples_b[a])
                lc = left_b[a]
                rc = right_b[a]
                n_left = float(samples_b[lc])
                n_right = float(samples_b[rc])
                impurity_left = squares[lc] / n_left - (totals[lc] / n_left) ** 2.0
                impurity_right = squares[rc] / n_right - (totals[rc] / n_right) ** 2.0
                improvement = (fm / n) * (impurity_b[a] - n_right / fm * impurity_right - n_left / fm * impurity_left)
                if improvement + eps < 0.0:
                    undo = True
                    best_feature[s] = -1
            if undo:  # rare: those nodes become leaves again; their children stay unreferenced
                for i in range(n):
                    a = nid[i]
                    if a >= first_child and best_feature[slot[parent_b[a]]] < 0:
                        nid[i] = parent_b[a]
                for s in range(splittable):
                    if best_feature[s] < 0:
                        a = node_of[s]
                        left_b[a] = -1
                        right_b[a] = -1
                        feature_b[a] = -2
                        threshold_b[a] = -2.0
                        missing_b[a] = 0
        level_start = first_child
        level_end = count

    # scikit-learn's depth-first order; the children named by their depth-first ids
    dfs_of, used = _depth_first_ids(left_b, right_b, capacity)
    for a in range(count):
        if left_b[a] >= 0:
            left_b[a] = dfs_of[left_b[a]]
            right_b[a] = dfs_of[right_b[a]]
    left_child = _permuted(left_b, dfs_of, -1)
    right_child = _permuted(right_b, dfs_of, -1)
    feature = _permuted(feature_b, dfs_of, -2)
    threshold = _permuted(threshold_b, dfs_of, -2.0)
    impurity = _permuted(impurity_b, dfs_of, 0.0)
    value = _permuted(value_b, dfs_of, 0.0)
    samples = _permuted(samples_b, dfs_of, 0)
    missing_left = _permuted(missing_b, dfs_of, 0)
    node_depth = _permuted(depth_b, dfs_of, 0)
    leaf_of = np.empty(n, np.int64)
    for i in range(n):
        leaf_of[i] = dfs_of[nid[i]]
    return 0, used, left_child, right_child, feature, threshold, impurity, value, samples, missing_left, node_depth, leaf_of


class HistogramGradientBoostingClassifier(PresortedGradientBoostingClassifier):
    """Fast mode's ``GradientBoostingClassifier``: trees grown by :func:`build_tree_histogram` (module docstring).

    Not exact mode's numbers (splits only between bins). Settings outside the
    presorted class's fast path (sample weights, subsampling, other tree
    sizes) run scikit-learn's own stage, as there.
    """

    max_bins = MAX_BINS

    def _fast_path(self, X, sample_weight, sample_mask, X_csc):
        cached = self._presorted
        if cached is not None and cached[0] is X:
            return cached
        presorted = super()._fast_path(X, sample_weight, sample_mask, X_csc)
        if presorted is None:
            return None
        _, order, xsorted, reciprocal = presorted
        bins, counts = bin_features(order, xsorted, self.max_bins)
        values = np.ascontiguousarray(X.T, dtype=np.float32)
        self._presorted = (X, bins, values, counts, reciprocal)
        return self._presorted

    def _grow(self, presorted, target, seed):
        _, bins, values, counts, reciprocal = presorted
        friedman = self._tree_criterion() == "friedman_mse"
        return build_tree_histogram(bins, values, counts, target, int(self.max_depth), friedman, reciprocal)[1:]
