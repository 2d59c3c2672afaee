"""Fast mode's gradient-boosted trees: scikit-learn's candidate splits, grown level by level.

Exact mode grows every tree as scikit-learn does
(:mod:`~disentbench.core.evaluation.presorted_trees`); most of that time goes to
partitioning every feature's sorted order at each split and to the
bookkeeping that proves each decision is the one scikit-learn's sums would
take. Fast mode (``evaluation.fast``) promises scores within 0.02 of exact
mode, not equal ones, so :class:`LevelwiseGradientBoostingClassifier` grows the
same model (the log loss's ``GradientBoostingClassifier()``: 100 stages,
learning rate 0.1, squared-error regression trees of depth 3 on the
gradients, one Newton step per leaf) with a cheaper builder:

* **Candidates.** The same as scikit-learn's: between two sorted values of a
  feature more than ``FEATURE_THRESHOLD`` apart (in float32), with its proxy
  improvement; a threshold is the midpoint of the node's values either side.
* **Growth.** Level by level: each level scans each feature's once-sorted
  order one time, all of the level's nodes at once (each sample carries its
  node), so nothing is sorted, partitioned or copied per tree. The root's scan
  keeps its running sums in registers.
* **What differs.** Only ties: the sums run in another order, and the
  features are visited in index order where scikit-learn draws a random order
  to break exact ties (tied codes, small nodes, and the first boosting stage,
  whose gradients take two values per class). On continuous targets a tree is
  ``DecisionTreeRegressor``'s (tested).
* **What stays scikit-learn's.** Leaves (its Newton step, via the presorted
  class), node impurities and sample counts as it defines them, so
  ``feature_importances_`` (DCI's importance matrix) is these trees' impurity
  importance, and the trees are ordinary ``sklearn.tree`` objects. Each tree
  takes the one ``randint`` draw a scikit-learn tree takes, so random streams
  stay where exact mode leaves them.

The scores this moves, per metric, are measured by ``benchmarks/metric_speed.py
--against-reference`` and bounded in tests/test_evaluation_modes.py.
"""

from __future__ import annotations

import numba
import numpy as np

from disentbench.core.evaluation.presorted_trees import PresortedGradientBoostingClassifier, node_records


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
def build_tree_levelwise(order, xsorted, values, y, max_depth, friedman, reciprocal):  # pragma: no cover - compiled
    """One regression tree on targets ``y``, grown level by level with every cut scikit-learn may make.

    ``order[f]`` is the samples sorted by feature f (stable) and ``xsorted[f]``
    their float32 values, as ``PresortedGradientBoostingClassifier`` keeps them;
    ``values[f, i]`` is sample i's value. ``reciprocal[k]`` is 1/k.

    Returns what ``presorted_trees.build_tree`` returns, nodes in scikit-learn's
    depth-first order (status 0 always).
    """
    num_features, n = values.shape
    threshold32 = np.float32(1e-7)  # scikit-learn's FEATURE_THRESHOLD, compared in float32 as it does
    capacity = 2 ** (max_depth + 1) - 1
    eps = 2.220446049250313e-16  # scikit-learn's EPSILON in the tree builder
    width = 2**max_depth

    # breadth-first node records
    left_b, right_b, feature_b, threshold_b, impurity_b, value_b, samples_b, missing_b, depth_b = node_records(capacity)
    parent_b = np.full(capacity, -1, np.int64)
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
    best_left = np.zeros(width, np.int64)
    best_low = np.zeros(width, np.float32)  # the best cut's values either side: its threshold is their midpoint
    best_high = np.zeros(width, np.float32)
    seen = np.zeros(width, np.int64)  # the scan's state per node: samples passed, their target sum, last value
    running = np.zeros(width)
    last = np.zeros(width, np.float32)

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
        for f in range(num_features):  # every node of the level at once, along the feature's sorted order
            for s in range(splittable):
                seen[s] = 0
                running[s] = 0.0
            feature_order = order[f]
            feature_sorted = xsorted[f]
            if depth == 0:  # the root: running sums in registers
                m = node_count[0]
                total = node_total[0]
                left_sum = 0.0
                previous = feature_sorted[0]
                for j in range(n):
                    x = feature_sorted[j]
                    if j > 0 and x > previous + threshold32:
                        rest = total - left_sum
                        if friedman:
                            diff = (float(m) - j) * left_sum - j * rest
                            proxy = diff * diff * reciprocal[j] * reciprocal[m - j]
                        else:
                            proxy = left_sum * left_sum * reciprocal[j] + rest * rest * reciprocal[m - j]
                        if proxy > best[0]:
                            best[0] = proxy
                            best_feature[0] = f
                            best_left[0] = j
                            best_low[0] = previous
                            best_high[0] = x
                    left_sum += y[feature_order[j]]
                    previous = x
                continue
            for j in range(n):
                i = feature_order[j]
                s = sid[i]
                if s < 0:
                    continue
                x = feature_sorted[j]
                k = seen[s]
                if k > 0 and x > last[s] + threshold32:  # a cut scikit-learn may make: k samples left
                    m = node_count[s]
                    left_sum = running[s]
                    rest = node_total[s] - left_sum
                    if friedman:
                        diff = (float(m) - k) * left_sum - k * rest
                        proxy = diff * diff * reciprocal[k] * reciprocal[m - k]
                    else:
                        proxy = left_sum * left_sum * reciprocal[k] + rest * rest * reciprocal[m - k]
                    if proxy > best[s]:
                        best[s] = proxy
                        best_feature[s] = f
                        best_left[s] = k
                        best_low[s] = last[s]
                        best_high[s] = x
                running[s] += y[i]
                seen[s] = k + 1
                last[s] = x
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
            child = left_b[a] if values[f, i] <= best_low[s] else right_b[a]
            nid[i] = child
            v = y[i]
            totals[child] += v
            squares[child] += v * v
        for s in range(splittable):
            if best_feature[s] >= 0:
                threshold_b[node_of[s]] = np.float64(best_low[s]) / 2.0 + np.float64(best_high[s]) / 2.0
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



class LevelwiseGradientBoostingClassifier(PresortedGradientBoostingClassifier):
    """Fast mode's ``GradientBoostingClassifier``: trees grown by :func:`build_tree_levelwise` (module docstring).

    Settings outside the presorted class's fast path (sample weights,
    subsampling, other tree sizes) run scikit-learn's own stage, as there.
    """

    def _fast_path(self, X, sample_weight, sample_mask, X_csc):
        cached = self._presorted
        if cached is not None and cached[0] is X:
            return cached
        presorted = super()._fast_path(X, sample_weight, sample_mask, X_csc)
        if presorted is None:
            return None
        _, order, xsorted, reciprocal = presorted
        self._presorted = (X, order, xsorted, np.ascontiguousarray(X.T, dtype=np.float32), reciprocal)
        return self._presorted

    def _grow(self, presorted, target, seed):
        _, order, xsorted, values, reciprocal = presorted
        friedman = self._tree_criterion() == "friedman_mse"
        return build_tree_levelwise(order, xsorted, values, target, int(self.max_depth), friedman, reciprocal)[1:]
