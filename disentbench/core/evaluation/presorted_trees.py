"""scikit-learn's ``GradientBoostingClassifier``, same trees, built from features sorted once.

The study's gradient-boosted trees (DCI, the GBT downstream task) spend over
90% of their time in ``DecisionTreeRegressor.fit``, which sorts every feature
again at every node of every tree: for a 40-class factor on 10,000 points that
is 4,000 trees and about 90 s on one core. The samples' order along each
feature never changes between trees, only the gradients they carry do, so
:class:`PresortedGradientBoostingClassifier` sorts each feature once per fit
and grows each tree depth first with stable partitions of those orders, in a
compiled (numba) loop. Each feature's order carries its gradients along, so
the split search reads memory in sequence; children at the depth limit are
leaves and get no partition (their members come from scikit-learn's own
sample array, which the builder replays).

**Exactness.** The trees must be the ones scikit-learn would grow, not merely
similar ones, because exact mode promises the study code's scores. A tree is
its structure (split features, thresholds, sample counts) plus floats derived
from it. The structure is decided by comparisons:

* which positions may split (consecutive sorted values more than
  ``FEATURE_THRESHOLD`` apart, in float32 as scikit-learn compares them) and
  the thresholds (midpoints of float32 values, exact in float64): reproduced
  exactly;
* the best split (largest proxy improvement, first found on ties), whether a
  node is pure (impurity at most machine epsilon) and whether a split improves
  at all: these compare sums of floats, which scikit-learn and this code add
  in different orders. Both sums are within a proven bound of the exact sum
  (at most ``n u / (1 - n u)`` times the sum of absolute values, ``u = 2**-53``);
  wherever the decision could flip within those bounds (the best and the
  runner-up candidate closer than the bound, an impurity within its bound of
  epsilon) the tree is handed to scikit-learn's own ``DecisionTreeRegressor``.

With the structure identical, leaf values, predictions and the random state
are scikit-learn's own: the leaves are set by scikit-learn's
``_update_terminal_regions`` from ``tree.apply``, and each tree this module
builds still takes the one ``randint(0, RAND_R_MAX)`` draw a scikit-learn tree
takes, and the draws of its splitter's feature order are replayed (that order
breaks exact ties). Node impurities are scikit-learn's bit for bit wherever its
summation order is known (its sample array is replayed too, except below a
node whose last sorted feature repeats values); elsewhere they are within
rounding of the node's mean square, and they enter only the impurity
importances (DCI).

This module imports scikit-learn and numba; ``core/evaluation/boosting.py``
decides whether to use it (a self-check, the environment switch) and is what
the metrics import.
"""

from __future__ import annotations

import copy

import numba
import numpy as np
import sklearn
from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.ensemble._gb import _update_terminal_regions
from sklearn.tree import DecisionTreeRegressor
from sklearn.tree._tree import NODE_DTYPE, Tree

#: scikit-learn's trees draw one ``randint(0, RAND_R_MAX)`` each for their splitter.
RAND_R_MAX = 0x7FFFFFFF


def _version(text: str) -> tuple[int, int]:
    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:2])
    return major, minor


SKLEARN_VERSION = _version(sklearn.__version__)


@numba.njit(nogil=True, cache=True)
def next_random(state):  # pragma: no cover - compiled
    """scikit-learn's ``our_rand_r`` xorshift on a one-element uint32 array; returns the draw."""
    x = state[0]
    if x == 0:
        x = np.uint32(1)  # DEFAULT_SEED
    x ^= np.uint32(x << np.uint32(13))
    x ^= np.uint32(x >> np.uint32(17))
    x ^= np.uint32(x << np.uint32(5))
    state[0] = x
    return np.int64(x % np.uint32(0x80000000))

@numba.njit(nogil=True, cache=True)
def proxy_of(left_sum, total, n_left, n_right, friedman):  # pragma: no cover - compiled
    """scikit-learn's proxy improvement, in its operation order."""
    right_sum = total - left_sum
    if friedman:
        diff = n_right * left_sum - n_left * right_sum
        return diff * diff / (n_left * n_right)
    return left_sum * left_sum / n_left + right_sum * right_sum / n_right

@numba.njit(nogil=True, cache=True)
def search(ys, values, reciprocal, f, s0, e0, total, friedman, best, second, near, tolerance, exact_before, best_left, best_sum):  # pragma: no cover
    """One feature's candidate splits, with the running sums scikit-learn's criterion keeps.

    Forward additions from the last candidate, or (when the jump is longer
    than what is left) a restart from the node total subtracting from the
    end: the order of scikit-learn's ``update``. With ``near`` set, counts
    instead the candidates within ``tolerance`` of ``best``, those of them
    whose sum may differ from scikit-learn's (past position
    ``exact_before``, or after a subtraction from the end), and those whose
    left count or sum differs from the best's (``best_left``, ``best_sum``).

    Proxies are first estimated with multiplications by ``reciprocal``
    (1/k; a few units in the last place off) and computed exactly, with
    scikit-learn's divisions, only where the estimate comes near the best.
    Also returns where the feature first repeats a value with another
    target (``e0 + 1`` if never): equal values with equal targets add up
    the same in any order.
    """
    threshold32 = np.float32(1e-7)  # scikit-learn's FEATURE_THRESHOLD (a float32 constant)
    m = float(e0 - s0)
    position = s0
    running = 0.0
    close = 0
    close_inexact = 0
    close_different = 0
    backward = False
    found = False
    found_left = -1
    found_sum = 0.0
    first_tie = e0 + 1
    slack = 8.0 * 2.0**-53
    row = values[f]
    targets = ys[f]
    ahead = 0.0  # the running sum carried forward to position j + 1: scikit-learn's additions, in its order
    for j in range(s0, e0 - 1):
        ahead += targets[j]
        if row[j + 1] <= row[j] + threshold32:
            # equal values in an order of scikit-learn's own matter only if their targets differ
            if first_tie > e0 and row[j + 1] == row[j] and targets[j + 1] != targets[j]:
                first_tie = j
            continue
        p = j + 1
        if p - position <= e0 - p:
            running = ahead
        else:
            running = total
            backward = True
            for q in range(e0 - 1, p - 1, -1):
                running -= targets[q]
            ahead = running
        position = p
        rest = total - running
        if friedman:
            diff = (m - (p - s0)) * running - (p - s0) * rest
            estimate = diff * diff * reciprocal[p - s0] * reciprocal[e0 - p]
        else:
            estimate = running * running * reciprocal[p - s0] + rest * rest * reciprocal[e0 - p]
        if near:
            if estimate >= best - tolerance:
                close += 1
                if backward or p > exact_before:
                    close_inexact += 1
                if p - s0 != best_left or running != best_sum:
                    close_different += 1
            continue
        if estimate < best - slack * abs(estimate):
            if estimate > second:
                second = estimate
            continue
        n_left = float(p - s0)
        proxy = proxy_of(running, total, n_left, m - n_left, friedman)
        if proxy > best:
            second = max(second, best)
            best = proxy
            found = True
            found_left = p - s0
            found_sum = running
        elif proxy > second:
            second = proxy
    return best, second, found, found_left, found_sum, close, close_inexact, close_different, first_tie

@numba.njit(nogil=True, cache=True)
def partition_like_sklearn(samples, lo, hi, goes_left):  # pragma: no cover - compiled
    """scikit-learn's ``partition_samples_final`` on samples[lo:hi]: a left one stays, a right one swaps with the end."""
    a = lo
    b = hi
    while a < b:
        if goes_left[samples[a]]:
            a += 1
        else:
            b -= 1
            t = samples[a]
            samples[a] = samples[b]
            samples[b] = t


@numba.njit(nogil=True, cache=True)
def tie_orders(perm, values, ls, s0, e0, split, goes_left, y, total, scratch, out):  # pragma: no cover - compiled
    """The children's sums under every order scikit-learn's sort may have left tied values of feature ``ls`` in.

    scikit-learn's samples are sorted by ``ls`` (its introsort puts equal
    values in an order this code cannot replay) and then partitioned; the
    children's sums run in the resulting order. With at most three pairs
    of equal values (and no larger tie), each of the 2**pairs orders is
    replayed: row v of ``out`` gets (left total, left squares, right total,
    right squares, the parent criterion's left sum, its left squares) for
    order v, row 0 being this code's own (stable) order. Equal values whose
    samples have equal targets and go the same way do not count: any order
    of them gives the same sums. Returns the number of orders (1: the order
    is known), or 0 where there are too many.
    """
    pairs = np.empty(3, np.int64)
    count = 0
    j = s0
    while j < e0 - 1:
        g = j + 1
        while g < e0 and values[ls, g] == values[ls, j]:
            g += 1
        if g - j > 1:  # a group of equal values: does its order change any sum or the partition?
            relevant = False
            first = perm[ls, j]
            for q in range(j + 1, g):
                other = perm[ls, q]
                if y[other] != y[first] or goes_left[other] != goes_left[first]:
                    relevant = True
            if relevant:
                if g - j > 2 or count == 3:
                    return 0
                pairs[count] = j
                count += 1
        j = g
    orders = 2**count
    if orders == 1:
        return 1
    m = e0 - s0
    for v in range(orders):
        for j in range(m):
            scratch[j] = perm[ls, s0 + j]
        for c in range(count):
            if (v >> c) & 1:
                a = pairs[c] - s0
                t = scratch[a]
                scratch[a] = scratch[a + 1]
                scratch[a + 1] = t
        partition_like_sklearn(scratch, 0, m, goes_left)
        left = split - s0
        lt = 0.0
        lq = 0.0
        for q in range(left):
            w = y[scratch[q]]
            lt += w
            lq += w * w
        rt = 0.0
        rq = 0.0
        for q in range(left, m):
            w = y[scratch[q]]
            rt += w
            rq += w * w
        if left <= m - left:
            criterion_left = lt
        else:
            criterion_left = total
            for q in range(m - 1, left - 1, -1):
                criterion_left -= y[scratch[q]]
        out[v, 0] = lt
        out[v, 1] = lq
        out[v, 2] = rt
        out[v, 3] = rq
        out[v, 4] = criterion_left
        out[v, 5] = lq
    return orders


@numba.njit(nogil=True, cache=True)
def node_records(capacity):  # pragma: no cover - compiled
    """Empty records for ``capacity`` nodes, as the builders return them: children, feature, threshold,
    impurity, value, samples, missing-left flag, depth (a leaf's children are -1, its feature and threshold -2)."""
    return (
        np.full(capacity, -1, np.int64),
        np.full(capacity, -1, np.int64),
        np.full(capacity, -2, np.int64),
        np.full(capacity, -2.0),
        np.zeros(capacity),
        np.zeros(capacity),
        np.zeros(capacity, np.int64),
        np.zeros(capacity, np.uint8),
        np.zeros(capacity, np.int64),
    )


@numba.njit(nogil=True, cache=True)
def build_tree(order, xsorted, y, max_depth, friedman, seed, reciprocal):  # pragma: no cover - compiled; tested through the class
    num_features, n = order.shape
    capacity = 2 ** (max_depth + 1) - 1
    unit = 2.0**-53
    eps = 2.220446049250313e-16  # np.finfo(float64).eps, scikit-learn's EPSILON in the tree builder
    threshold32 = np.float32(1e-7)

    perm = order.copy()  # per feature: node segments, each sorted by the feature (stable)
    values = xsorted.copy()
    ys = np.empty((num_features, n))  # per feature: the targets in its order (sequential reads in the search)
    for f in range(num_features):
        for j in range(n):
            ys[f, j] = y[perm[f, j]]
    sk = np.arange(n)  # scikit-learn's own sample array: its sums run in this order
    scratch_index = np.empty(n, np.int32)
    scratch_value = np.empty(n, np.float32)
    scratch_target = np.empty(n)
    goes_left = np.zeros(n, np.bool_)
    state = np.empty(1, np.uint32)
    state[0] = np.uint32(seed)
    features = np.arange(num_features)
    constant_features = np.zeros(num_features, np.int64)
    visited = np.empty(num_features, np.int64)
    first_tie = np.zeros(num_features, np.int64)  # per feature: where its first repeated value sits
    variants = np.zeros((8, 6))
    tie_scratch = np.empty(n, np.int64)

    left_child, right_child, feature, threshold, impurity, value, samples, missing_left, node_depth = node_records(capacity)
    node_start = np.zeros(capacity, np.int64)
    leaf_of = np.zeros(n, np.int64)  # each sample's leaf (node id), filled once the tree is grown
    count = 0

    # the builder's stack: start, end, depth, parent, is_left, n_constant_features, order known, impurity exact
    stack = np.zeros((capacity + 1, 8), np.int64)
    stack_impurity = np.zeros(capacity + 1)
    # for a node whose sample order is unknown: its (total, squares) under each possible order
    stack_orders = np.zeros(capacity + 1, np.int64)
    stack_sums = np.zeros((capacity + 1, 8, 2))
    stack[0, 1] = n
    stack[0, 3] = -1
    stack[0, 6] = 1
    stack[0, 7] = 1
    stack_impurity[0] = np.nan  # the root's impurity comes from its own sums
    top = 1
    while top > 0:
        top -= 1
        s0 = stack[top, 0]
        e0 = stack[top, 1]
        depth = stack[top, 2]
        parent = stack[top, 3]
        is_left = stack[top, 4]
        n_known = stack[top, 5]
        order_known = stack[top, 6] == 1
        impurity_exact = stack[top, 7] == 1
        orders = stack_orders[top]
        sums = stack_sums[top, :max(orders, 1)].copy()
        node = count
        count += 1
        if parent >= 0:
            if is_left:
                left_child[parent] = node
            else:
                right_child[parent] = node
        m = e0 - s0
        total = 0.0
        squares = 0.0
        absolute = 0.0
        largest = 0.0
        for j in range(s0, e0):
            v = y[sk[j]]
            total += v
            squares += v * v
            absolute += abs(v)
            largest = max(largest, abs(v))
        node_impurity = stack_impurity[top]
        # scikit-learn's total and squares are this code's when its order is known or every order agrees
        sums_known = order_known
        if not order_known and orders > 0:
            sums_known = True
            for v in range(1, orders):
                if sums[v, 0] != sums[0, 0] or sums[v, 1] != sums[0, 1]:
                    sums_known = False
        if parent < 0:
            node_impurity = squares / m - (total / m) ** 2.0
        value[node] = total / m
        samples[node] = m
        node_start[node] = s0
        impurity[node] = node_impurity
        node_depth[node] = depth
        if depth >= max_depth or m < 2:
            continue
        gamma = m * unit / (1.0 - m * unit)
        impurity_error = 4.0 * (gamma * squares / m + 2.0 * largest * gamma * absolute / m + unit * squares / m)
        if not impurity_exact and abs(node_impurity - eps) <= impurity_error:
            return -1, count, left_child, right_child, feature, threshold, impurity, value, samples, missing_left, node_depth, leaf_of
        if node_impurity <= eps:
            continue  # pure: a leaf

        # scikit-learn's draw of the features: Fisher-Yates over the non-constant ones
        f_i = num_features
        n_visited = 0
        n_found = 0
        n_drawn = 0
        n_total = n_known
        n_ranked = 0
        last_sorted = -1
        best = -np.inf
        second = -np.inf
        best_feature = -1
        best_left = -1
        best_sum = 0.0
        inexact = False
        while f_i > n_total and (n_visited < num_features or n_visited <= n_found + n_drawn):
            n_visited += 1
            f_j = n_drawn + next_random(state) % (f_i - n_found - n_drawn)
            if f_j < n_known:
                t = features[n_drawn]
                features[n_drawn] = features[f_j]
                features[f_j] = t
                n_drawn += 1
                continue
            f_j += n_found
            f = features[f_j]
            last_sorted = f  # scikit-learn sorts its samples by this feature before the constant test
            if values[f, e0 - 1] <= values[f, s0] + threshold32:
                t = features[n_total]
                features[n_total] = features[f_j]
                features[f_j] = t
                n_found += 1
                n_total += 1
                continue
            f_i -= 1
            t = features[f_i]
            features[f_i] = features[f_j]
            features[f_j] = t
            visited[n_ranked] = f
            n_ranked += 1
            best, second, found, found_left, found_sum, _, _, _, first_tie[f] = search(
                ys, values, reciprocal, f, s0, e0, total, friedman, best, second, False, 0.0, 0, 0, 0.0
            )
            if first_tie[f] <= e0 or not sums_known:
                inexact = True  # tied values (scikit-learn sorts them its own way), or an unknown total
            if found:
                best_feature = f
                best_left = found_left
                best_sum = found_sum
        for j in range(n_known):
            features[j] = constant_features[j]
        for j in range(n_known, n_known + n_found):
            constant_features[j] = features[j]
        if last_sorted >= 0:
            for j in range(s0, e0):
                sk[j] = perm[last_sorted, j]
        if best_feature < 0:
            continue  # every feature constant here: a leaf

        if inexact:
            scale = float(m) if friedman else 1.0
            # either proxy within 2 M scale (16 gamma A) + 6 u |P| of the exact one; twice that for room
            tolerance = 2.0 * (32.0 * largest * scale * gamma * absolute + 12.0 * unit * abs(best))
            if best - second <= tolerance:
                close = 0
                close_inexact = 0
                close_different = 0
                for r in range(n_ranked):
                    f = visited[r]
                    _, _, _, _, _, c, c_inexact, c_different, _ = search(
                        ys, values, reciprocal, f, s0, e0, total, friedman, best, second, True, tolerance, first_tie[f],
                        best_left, best_sum,
                    )
                    close += c
                    close_inexact += c_inexact
                    close_different += c_different
                # Exact unless a close candidate's sum may differ from scikit-learn's, or (with its total
                # unknown) a close candidate's proxy is not bit for bit the best's whatever the total.
                settled = close <= 1 or (close_inexact == 0 and (sums_known or close_different == 0))
                if not settled and close_inexact == 0 and orders > 0:
                    # the total is one of a few: the split must win under each of them
                    settled = True
                    for v in range(1, orders):
                        alternative = -np.inf
                        other_second = -np.inf
                        winner = -1
                        winner_left = -1
                        for r in range(n_ranked):
                            f = visited[r]
                            alternative, other_second, found, found_left, _, _, _, _, _ = search(
                                ys, values, reciprocal, f, s0, e0, sums[v, 0], friedman, alternative,
                                other_second, False, 0.0, 0, 0, 0.0,
                            )
                            if found:
                                winner = f
                                winner_left = found_left
                        if winner != best_feature or winner_left != best_left:
                            settled = False
                            break
                if not settled:
                    return -2, count, left_child, right_child, feature, threshold, impurity, value, samples, missing_left, node_depth, leaf_of

        lo = values[best_feature, s0 + best_left - 1]
        hi = values[best_feature, s0 + best_left]
        for j in range(s0, e0):
            goes_left[perm[best_feature, j]] = j < s0 + best_left
        partition_like_sklearn(sk, s0, e0, goes_left)  # scikit-learn's own sample array, as it partitions it
        children_orders = 0
        if last_sorted >= 0:
            children_orders = tie_orders(perm, values, last_sorted, s0, e0, s0 + best_left, goes_left, y, total, tie_scratch, variants)
        children_known = children_orders == 1
        # scikit-learn's criterion.reset(); update(pos); children_impurity(), over that order
        split = s0 + best_left
        if split - s0 <= e0 - split:
            left_sum = 0.0
            for q in range(s0, split):
                left_sum += y[sk[q]]
        else:
            left_sum = total
            for q in range(e0 - 1, split - 1, -1):
                left_sum -= y[sk[q]]
        left_squares = 0.0
        for q in range(s0, split):
            v = y[sk[q]]
            left_squares += v * v
        n_left = float(best_left)
        n_right = float(m) - n_left
        right_sum = total - left_sum
        impurity_left = left_squares / n_left - (left_sum / n_left) ** 2.0
        impurity_right = (squares - left_squares) / n_right - (right_sum / n_right) ** 2.0
        exact_children = sums_known and children_known
        if children_orders > 1:
            if sums_known:
                # the children's impurities need the criterion's left sum and squares to agree too
                exact_children = True
                for v in range(1, children_orders):
                    if variants[v, 4] != variants[0, 4] or variants[v, 5] != variants[0, 5]:
                        exact_children = False
        if not friedman:
            improvement = (m / n) * (node_impurity - n_right / m * impurity_right - n_left / m * impurity_left)
            if not (exact_children and impurity_exact):
                improvement_error = (m / n) * 4.0 * (
                    3.0 * impurity_error + unit * (abs(node_impurity) + abs(impurity_left) + abs(impurity_right))
                )
                if abs(improvement + eps) <= improvement_error:
                    return -3, count, left_child, right_child, feature, threshold, impurity, value, samples, missing_left, node_depth, leaf_of
            if improvement + eps < 0.0:
                continue  # no gain: a leaf
        feature[node] = best_feature
        threshold[node] = np.float64(lo) / 2.0 + np.float64(hi) / 2.0
        missing_left[node] = 1 if best_left > m - best_left else 0
        # stable partition of every feature's order: left samples first. Children at the depth
        # limit are leaves: nothing reads their orders (their sums and members come from ``sk``).
        for f in range(num_features if depth + 1 < max_depth else 0):
            w = s0
            r = 0
            for j in range(s0, e0):  # branch-free: both slots written, one advanced
                i = perm[f, j]
                x = values[f, j]
                target = ys[f, j]
                g = 1 if goes_left[i] else 0
                perm[f, w] = i
                values[f, w] = x
                ys[f, w] = target
                scratch_index[r] = i
                scratch_value[r] = x
                scratch_target[r] = target
                w += g
                r += 1 - g
            for t in range(r):
                perm[f, w + t] = scratch_index[t]
                values[f, w + t] = scratch_value[t]
                ys[f, w + t] = scratch_target[t]
        # right child first on the stack, so the left one is built first
        for child_start, child_end, child_left, child_impurity in (
            (split, e0, 0, impurity_right), (s0, split, 1, impurity_left),
        ):
            stack[top, 0] = child_start
            stack[top, 1] = child_end
            stack[top, 2] = depth + 1
            stack[top, 3] = node
            stack[top, 4] = child_left
            stack[top, 5] = n_total
            stack[top, 6] = 1 if children_known else 0
            stack[top, 7] = 1 if exact_children else 0
            stack_impurity[top] = child_impurity
            stack_orders[top] = children_orders if children_orders > 1 else 0
            for v in range(children_orders if children_orders > 1 else 0):
                stack_sums[top, v, 0] = variants[v, 0] if child_left else variants[v, 2]
                stack_sums[top, v, 1] = variants[v, 1] if child_left else variants[v, 3]
            top += 1
    for node in range(count):
        if left_child[node] == -1:
            for j in range(node_start[node], node_start[node] + samples[node]):
                leaf_of[sk[j]] = node
    return 0, count, left_child, right_child, feature, threshold, impurity, value, samples, missing_left, node_depth, leaf_of

@numba.njit(nogil=True, cache=True)
def pairwise_sum(a, lo, n):  # pragma: no cover - compiled
    """numpy's ``add.reduce`` of a contiguous float64 array a[lo:lo + n], in its pairwise order, bit for bit."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    if n <= 128:
        r0 = a[lo]
        r1 = a[lo + 1]
        r2 = a[lo + 2]
        r3 = a[lo + 3]
        r4 = a[lo + 4]
        r5 = a[lo + 5]
        r6 = a[lo + 6]
        r7 = a[lo + 7]
        i = 8
        while i < n - (n % 8):
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return pairwise_sum(a, lo, half) + pairwise_sum(a, lo + half, n - half)

@numba.njit(nogil=True, cache=True)
def update_leaves(leaf_of, count, left_child, neg_gradient, y, raw, k, learning_rate, num_classes, value):  # pragma: no cover
    """scikit-learn's ``_update_terminal_regions`` for the log loss, in its arithmetic order.

    Each leaf's value: one Newton step, the mean negative gradient (times
    (K-1)/K for K > 2 classes) over the mean of p (1 - p), the means being
    numpy's pairwise sums over the leaf's samples in index order divided by
    their count, and 0 for a hessian under 1e-150. Then every sample's raw
    prediction gains the learning rate times its leaf's value. Returns
    False (nothing changed) where a step overflows, so scikit-learn's own
    code raises its warning.
    """
    n = len(leaf_of)
    sizes = np.zeros(count, np.int64)
    for i in range(n):
        sizes[leaf_of[i]] += 1
    offsets = np.zeros(count + 1, np.int64)
    for node in range(count):
        offsets[node + 1] = offsets[node] + sizes[node]
    fill = offsets[:count].copy()
    gathered = np.empty(n)
    hessians = np.empty(n)
    for i in range(n):
        node = leaf_of[i]
        g = neg_gradient[i]
        prob = y[i] - g
        gathered[fill[node]] = g
        hessians[fill[node]] = prob * (1 - prob)
        fill[node] += 1
    updates = value.copy()
    for node in range(count):
        if left_child[node] != -1:
            continue
        size = float(sizes[node])
        numerator = pairwise_sum(gathered, offsets[node], sizes[node]) / size
        if num_classes > 2:
            numerator *= (num_classes - 1) / num_classes
        denominator = pairwise_sum(hessians, offsets[node], sizes[node]) / size
        if abs(denominator) < 1e-150:
            updates[node] = 0.0
        else:
            step = numerator / denominator
            if np.isinf(step):
                return False
            updates[node] = step
    for node in range(count):
        value[node] = updates[node]
    for i in range(n):
        raw[i, k] += learning_rate * value[leaf_of[i]]
    return True


def _builder():
    """The compiled (tree builder, leaf update); numba compiles them on first call and caches them on disk."""
    return build_tree, update_leaves


def _node_array(count, left_child, right_child, feature, threshold, impurity, value, samples, missing_left, node_depth, node_fields):
    """scikit-learn's node records and values from the builder's arrays (already in its depth-first order)."""
    nodes = np.zeros(count, dtype=node_fields)
    nodes["left_child"] = left_child[:count]
    nodes["right_child"] = right_child[:count]
    nodes["feature"] = feature[:count]
    nodes["threshold"] = threshold[:count]
    nodes["impurity"] = impurity[:count]
    nodes["n_node_samples"] = samples[:count]
    nodes["weighted_n_node_samples"] = samples[:count].astype(np.float64)
    if "missing_go_to_left" in nodes.dtype.names:
        nodes["missing_go_to_left"] = missing_left[:count]
    return nodes, value[:count].reshape(count, 1, 1).copy(), int(node_depth[:count].max())


def available() -> bool:
    """Whether this scikit-learn (>= 1.4) and numba can run :class:`PresortedGradientBoostingClassifier`."""
    return SKLEARN_VERSION >= (1, 4) and _builder() is not None


class PresortedGradientBoostingClassifier(GradientBoostingClassifier):
    """``GradientBoostingClassifier`` whose trees grow from once-sorted features (see the module docstring).

    Same parameters, same fitted attributes, same numbers. Only sklearn's
    defaults for the trees' size and leaves (``subsample=1``, no sample
    weights, ``max_features=None``, leaves of one sample, no impurity
    threshold, no leaf cap) and dense finite inputs take the fast path; any
    other setting runs scikit-learn's own stage.
    """

    def fit(self, X, y, sample_weight=None, monitor=None):
        """Fit as scikit-learn does; the presorted features live only for this call."""
        self._presorted = None
        self.presorted_trees_ = 0  # trees this class grew
        self.sklearn_trees_ = 0  # trees handed to scikit-learn's builder (a decision within rounding)
        try:
            return super().fit(X, y, sample_weight=sample_weight, monitor=monitor)
        finally:
            self._presorted = None
            self._indicator_cache = None

    def _indicators(self, y):
        """Per class k, ``y == k`` as float64 (the multiclass trees' ``y``), made once per fit, not per stage."""
        cached = getattr(self, "_indicator_cache", None)
        if cached is None or cached[0] is not y:
            cached = (y, (y[None, :] == np.arange(self.n_trees_per_iteration_)[:, None]).astype(np.float64))
            self._indicator_cache = cached
        return cached[1]

    def _tree_criterion(self):
        # scikit-learn 1.9 deprecated the parameter: its trees always use squared_error; before, the parameter
        if SKLEARN_VERSION >= (1, 9):
            return "squared_error"
        return getattr(self, "criterion", "friedman_mse")

    def _fast_path(self, X, sample_weight, sample_mask, X_csc):
        if (
            X_csc is not None
            or not isinstance(self._loss, (HalfBinomialLoss, HalfMultinomialLoss))  # the log loss's leaf step only
            or self.subsample < 1.0
            or self.max_features not in (None,)
            or self.min_samples_split != 2
            or self.min_samples_leaf != 1
            or self.min_weight_fraction_leaf != 0.0
            or self.min_impurity_decrease != 0.0
            or self.max_leaf_nodes is not None
            or self.ccp_alpha != 0.0
            or self.max_depth is None
            or self.max_depth > 12
            or self._tree_criterion() not in ("squared_error", "friedman_mse")
            or not isinstance(X, np.ndarray)
            or X.dtype != np.float32
        ):
            return None
        cached = self._presorted
        if cached is not None and cached[0] is X:
            return cached
        if not (np.all(sample_weight == 1.0) and np.all(sample_mask) and np.isfinite(X).all()):
            return None
        order = np.argsort(X, axis=0, kind="stable").T.astype(np.int32, copy=True)
        xsorted = np.take_along_axis(X.T, order.astype(np.intp), axis=1).astype(np.float32, copy=True)
        reciprocal = np.zeros(X.shape[0] + 1)
        reciprocal[1:] = 1.0 / np.arange(1, X.shape[0] + 1)
        self._presorted = (X, np.ascontiguousarray(order), np.ascontiguousarray(xsorted), reciprocal)
        return self._presorted

    def _grow(self, presorted, target, seed):
        """The builder's arrays for one tree, or None where scikit-learn must grow it."""
        _, order, xsorted, reciprocal = presorted
        build, _ = _builder()
        friedman = self._tree_criterion() == "friedman_mse"
        result = build(order, xsorted, target, int(self.max_depth), friedman, seed, reciprocal)
        return None if result[0] < 0 else result[1:]

    @staticmethod
    def _tree(num_features, grown):
        nodes, values, depth = _node_array(*grown[:-1], node_fields=NODE_DTYPE)
        tree = Tree(num_features, np.array([1], dtype=np.intp), 1)
        tree.__setstate__({"max_depth": depth, "node_count": len(nodes), "nodes": nodes, "values": values})
        return tree

    def _shell(self, X, random_state):
        template = getattr(self, "_shell_template", None)
        if template is None or template.n_features_in_ != X.shape[1]:
            template = self._new_tree(random_state=np.random.RandomState(0))
            template.fit(X[:2], np.zeros(2), check_input=False)
            self._shell_template = template
        shell = copy.copy(template)
        shell.random_state = random_state
        return shell

    def _new_tree(self, random_state):
        return DecisionTreeRegressor(
            criterion=self._tree_criterion(),
            splitter="best",
            max_depth=self.max_depth,
            min_samples_split=self.min_samples_split,
            min_samples_leaf=self.min_samples_leaf,
            min_weight_fraction_leaf=self.min_weight_fraction_leaf,
            min_impurity_decrease=self.min_impurity_decrease,
            max_features=self.max_features,
            max_leaf_nodes=self.max_leaf_nodes,
            random_state=random_state,
            ccp_alpha=self.ccp_alpha,
        )

    def _fit_stage(self, i, X, y, raw_predictions, sample_weight, sample_mask, random_state, X_csc=None, X_csr=None):
        presorted = self._fast_path(X, sample_weight, sample_mask, X_csc)
        if presorted is None:
            return super()._fit_stage(i, X, y, raw_predictions, sample_weight, sample_mask, random_state, X_csc=X_csc, X_csr=X_csr)
        original_y = y
        neg_gradient = -self._loss.gradient(y_true=y, raw_prediction=raw_predictions, sample_weight=None)
        neg_g_view = neg_gradient.reshape((-1, 1)) if neg_gradient.ndim == 1 else neg_gradient
        targets = np.ascontiguousarray(neg_g_view.T)  # one transpose per stage: each class's gradients contiguous
        if self._loss.is_multiclass:
            indicators = self._indicators(original_y)
        for k in range(self.n_trees_per_iteration_):
            if self._loss.is_multiclass:
                y = indicators[k]
            target = targets[k]
            before = random_state.get_state()
            seed = random_state.randint(0, RAND_R_MAX)  # the draw sklearn's splitter makes: its tie-breaking
            grown = self._grow(presorted, target, seed)
            updated = False
            if grown is None:  # a decision within rounding: scikit-learn's own builder takes it
                random_state.set_state(before)
                estimator = self._new_tree(random_state)
                estimator.fit(X, neg_g_view[:, k], sample_weight=sample_weight, check_input=False)
                self.sklearn_trees_ += 1
            else:
                estimator = self._shell(X, random_state)
                self.presorted_trees_ += 1
                count, left_child, value, leaf_of = grown[0], grown[1], grown[6], grown[-1]
                _, update = _builder()
                classes = self._loss.n_classes if self._loss.is_multiclass else 2
                if raw_predictions.flags.c_contiguous and raw_predictions.dtype == np.float64:
                    updated = update(
                        leaf_of, count, left_child, target, np.ascontiguousarray(y, dtype=np.float64), raw_predictions, k,
                        float(self.learning_rate), classes, value,
                    )  # fmt: skip
                estimator.tree_ = self._tree(X.shape[1], grown)
            if not updated:  # scikit-learn's own leaf step (its trees, or a step that overflowed)
                _update_terminal_regions(
                    self._loss, estimator.tree_, X, y, neg_g_view[:, k], raw_predictions, sample_weight, sample_mask,
                    learning_rate=self.learning_rate, k=k,
                )  # fmt: skip
            self.estimators_[i, k] = estimator
        return raw_predictions

    def __getstate__(self):
        state = super().__getstate__()
        for name in ("_presorted", "_shell_template", "_indicator_cache"):
            state.pop(name, None)
        return state

