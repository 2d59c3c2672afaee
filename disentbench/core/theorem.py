"""Theorem 1 of Locatello et al. 2019, demonstrated by construction (spec section 8).

For independent latents z with non-Gaussian marginals F_i, the map

    f = g^-1 . h^-1 . A . h . g,   g_i(u) = F_i(u_i),  h_i(v) = Phi^-1(v_i),

with A orthogonal and free of zero entries, is a bijection of the support with
f(z) ~ z (N(0, I) is rotation invariant) whose Jacobian
df_i/du_j = (g_i^-1 . h_i^-1)' A_ij (h_j . g_j)' has no zero entry: f(z) is
completely entangled, yet no observation of x can tell the two latent
representations apart. A is a Householder reflection
A = I - 2 v v^T, v_1 = sqrt(alpha), v_{i>1} = sqrt((1 - alpha)/(d - 1)),
alpha in (0, 1/2) (an infinite family; alpha = (1 - 1/sqrt(d))/2 makes the first
row's entries equal in magnitude), or, in 2-D, a rotation by an angle that is
not a multiple of 90 degrees.

:func:`demonstrate` measures everything the theorem claims: two-sample tests
per marginal (Kolmogorov-Smirnov) and on the joint (energy-distance permutation
test, chi-square tests on pairwise 2-D histograms), independence of the
coordinates of f(z), the finite-difference Jacobian, the round trip
f^-1(f(z)) = z, and disentanglement scores of a representation equal to z
versus one equal to f(z). A plain linear mixing A z is shown as a control
that the tests do catch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from disentbench.core.contracts import PluginConfig

#: Named marginals: non-Gaussian, independent, each with a fixed shape.
MARGINALS: dict[str, tuple[str, Callable[[], Any]]] = {
    "uniform": ("Uniform(0, 1)", lambda: _stats().uniform(0.0, 1.0)),
    "exponential": ("Exponential(1)", lambda: _stats().expon()),
    "beta": ("Beta(2, 5)", lambda: _stats().beta(2.0, 5.0)),
    "laplace": ("Laplace(0, 1)", lambda: _stats().laplace()),
    "gamma": ("Gamma(2, 1)", lambda: _stats().gamma(2.0)),
    "lognormal": ("LogNormal(0, 0.5)", lambda: _stats().lognorm(0.5)),
}


def _stats():
    from scipy import stats

    return stats


class TheoremConfig(PluginConfig):
    dims: int = Field(2, ge=2, le=32, description="Number of latent dimensions d (the theorem needs d > 1).")
    marginals: list[str] = Field(
        default_factory=lambda: ["uniform", "exponential"],
        min_length=1,
        description=f"Marginal of each dimension, cycled over the d dimensions: {', '.join(MARGINALS)}.",
    )
    samples: int = Field(5000, ge=200, le=2_000_000, description="Samples of z (and as many again for reference).")
    seed: int = Field(0, ge=0)
    alpha: float | None = Field(
        None, gt=0, lt=0.5, description="Householder parameter in (0, 1/2); default (1 - 1/sqrt(d))/2."
    )
    angle: float | None = Field(
        None, description="2-D only: use a rotation by this many degrees instead of the Householder reflection."
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["mig", "dci", "factor_vae_score"],
        description="Metric plugins scored on z and on f(z) (`disentbench theorem` refuses unknown names; "
        "through the API, unregistered ones are reported and skipped).",
    )
    num_bins: int = Field(10, ge=2, le=50, description="Ground-truth factors: each z_i cut into this many equal-width bins.")
    metric_samples: int = Field(2000, ge=100, description="Points the metrics are computed on.")
    permutations: int = Field(200, ge=20, description="Permutations of the energy-distance test.")

    @field_validator("marginals")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in MARGINALS]
        if unknown:
            raise ValueError(f"unknown marginal(s) {', '.join(unknown)}; choose from {', '.join(MARGINALS)}")
        return values

    @model_validator(mode="after")
    def _angle(self) -> TheoremConfig:
        if self.angle is not None:
            if self.dims != 2:
                raise ValueError("--angle (a rotation) is for 2-D only; use --alpha for d > 2")
            if self.alpha is not None:
                raise ValueError("give either --alpha (Householder) or --angle (rotation), not both")
            if math.isclose(math.remainder(self.angle, 90.0), 0.0, abs_tol=1e-9):
                raise ValueError(f"a rotation by {self.angle:g} degrees has zero entries; pick an angle not a multiple of 90")
        return self

    def marginal_names(self) -> list[str]:
        return [self.marginals[i % len(self.marginals)] for i in range(self.dims)]


# ---------------------------------------------------------------------------
# the construction


def balanced_alpha(dims: int) -> float:
    """The alpha at which |A_11| = |A_1j| = 1/sqrt(d) (the first row spreads evenly)."""
    return (1.0 - 1.0 / math.sqrt(dims)) / 2.0


def householder(dims: int, alpha: float) -> np.ndarray:
    """A = I - 2 v v^T with v_1 = sqrt(alpha), v_i = sqrt((1 - alpha)/(d - 1)): orthogonal, symmetric.

    Every entry is nonzero for alpha in (0, 1/2) (the diagonal entries
    1 - 2 alpha and 1 - 2 (1 - alpha)/(d - 1) vanish only at its ends).
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 1/2), got {alpha}")
    v = np.full(dims, math.sqrt((1.0 - alpha) / (dims - 1)))
    v[0] = math.sqrt(alpha)
    return np.eye(dims) - 2.0 * np.outer(v, v)


def rotation(angle_degrees: float) -> np.ndarray:
    theta = math.radians(angle_degrees)
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


class EntanglingBijection:
    """f = g^-1 . h^-1 . A . h . g on rows of ``(n, d)`` arrays, and its inverse.

    Tails are computed through survival functions (``isf``/``sf``) on the upper
    half so the round trip keeps full precision far from the median.
    """

    def __init__(self, marginals: list, mixing: np.ndarray):
        self.marginals = marginals
        self.mixing = np.asarray(mixing, dtype=float)
        if not np.allclose(self.mixing @ self.mixing.T, np.eye(len(marginals)), atol=1e-12):
            raise ValueError("the mixing matrix must be orthogonal")

    def to_gaussian(self, z: np.ndarray) -> np.ndarray:
        """h . g: each coordinate through its CDF, then the standard normal quantile."""
        norm = _stats().norm
        out = np.empty_like(z, dtype=float)
        for i, marginal in enumerate(self.marginals):
            cdf, sf = marginal.cdf(z[:, i]), marginal.sf(z[:, i])
            out[:, i] = np.where(cdf < 0.5, norm.ppf(cdf), norm.isf(sf))
        return out

    def from_gaussian(self, y: np.ndarray) -> np.ndarray:
        """g^-1 . h^-1."""
        norm = _stats().norm
        out = np.empty_like(y, dtype=float)
        for i, marginal in enumerate(self.marginals):
            lower = y[:, i] < 0
            out[:, i] = np.where(lower, marginal.ppf(norm.cdf(y[:, i])), marginal.isf(norm.sf(y[:, i])))
        return out

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.from_gaussian(self.to_gaussian(z) @ self.mixing.T)

    def inverse(self, u: np.ndarray) -> np.ndarray:
        return self.from_gaussian(self.to_gaussian(u) @ self.mixing)  # A^-1 = A^T

    def analytic_jacobian(self, z: np.ndarray) -> np.ndarray:
        """df_i/du_j = A_ij (h_j . g_j)'(z_j) / (h_i . g_i)'(f_i(z)), ``(n, d, d)``.

        (h . g)'(u) = p(u) / phi(Phi^-1(F(u))), and (g^-1 . h^-1)' is its reciprocal at the image.
        """
        norm = _stats().norm

        def slope(values: np.ndarray) -> np.ndarray:
            gaussian = self.to_gaussian(values)
            densities = np.column_stack([m.pdf(values[:, i]) for i, m in enumerate(self.marginals)])
            return densities / norm.pdf(gaussian)

        inner = slope(z)
        outer = slope(self(z))
        return self.mixing[None, :, :] * inner[:, None, :] / outer[:, :, None]


def finite_difference_jacobian(function: Callable[[np.ndarray], np.ndarray], points: np.ndarray, step: float = 1e-5):
    """Central differences, ``(n, d, d)`` with [k, i, j] = d f_i / d u_j at point k (relative step)."""
    n, d = points.shape
    jacobian = np.empty((n, d, d))
    for j in range(d):
        h = step * np.maximum(1.0, np.abs(points[:, j]))
        plus, minus = points.copy(), points.copy()
        plus[:, j] += h
        minus[:, j] -= h
        jacobian[:, :, j] = (function(plus) - function(minus)) / (2.0 * h[:, None])
    return jacobian


# ---------------------------------------------------------------------------
# two-sample tests


def energy_test(x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """Energy-distance two-sample permutation test (Szekely & Rizzo): (statistic, p-value)."""
    from scipy.spatial.distance import cdist

    pooled = np.vstack([x, y])
    distances = cdist(pooled, pooled)
    n, total = len(x), len(pooled)

    def statistics(labels: np.ndarray) -> np.ndarray:  # labels (total, k) of 0/1, 1 = first sample
        first = labels.astype(float)
        second = 1.0 - first
        d_first = distances @ first
        d_second = distances @ second
        within_first = np.einsum("ik,ik->k", first, d_first) / n**2
        within_second = np.einsum("ik,ik->k", second, d_second) / (total - n) ** 2
        between = np.einsum("ik,ik->k", first, d_second) / (n * (total - n))
        return 2 * between - within_first - within_second

    observed = statistics(np.r_[np.ones(n), np.zeros(total - n)][:, None])[0]
    labels = np.zeros((total, permutations))
    for k in range(permutations):
        labels[rng.permutation(total)[:n], k] = 1.0
    permuted = statistics(labels)
    p_value = (1 + np.sum(permuted >= observed)) / (permutations + 1)
    return float(observed), float(p_value)


def histogram_pair_test(x: np.ndarray, y: np.ndarray, i: int, j: int, bins: int = 6) -> float:
    """Chi-square homogeneity test of the 2-D histograms of coordinates (i, j) of two samples: p-value.

    Bins are quantiles of the pooled sample, so every cell is populated.
    """
    from scipy.stats import chi2_contingency

    pooled = np.vstack([x, y])
    edges_i = np.quantile(pooled[:, i], np.linspace(0, 1, bins + 1)[1:-1])
    edges_j = np.quantile(pooled[:, j], np.linspace(0, 1, bins + 1)[1:-1])

    def counts(sample):
        cells = np.digitize(sample[:, i], edges_i) * bins + np.digitize(sample[:, j], edges_j)
        return np.bincount(cells, minlength=bins * bins)

    table = np.vstack([counts(x), counts(y)])
    table = table[:, table.sum(axis=0) > 0]
    return float(chi2_contingency(table)[1])


def independence_test(sample: np.ndarray, i: int, j: int, bins: int = 6) -> float:
    """Chi-square test that coordinates i and j of ``sample`` are independent (quantile bins): p-value."""
    from scipy.stats import chi2_contingency

    edges_i = np.quantile(sample[:, i], np.linspace(0, 1, bins + 1)[1:-1])
    edges_j = np.quantile(sample[:, j], np.linspace(0, 1, bins + 1)[1:-1])
    table = np.zeros((bins, bins))
    np.add.at(table, (np.digitize(sample[:, i], edges_i), np.digitize(sample[:, j], edges_j)), 1)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    return float(chi2_contingency(table)[1])


# ---------------------------------------------------------------------------
# ground truth for the metrics: latents as observations


class LatentFactorData:
    """A ground-truth dataset whose observations are the latents z themselves.

    Factor i is the index of the equal-width bin of z_i (``num_bins`` bins between
    the 0.1% and 99.9% quantiles of F_i; the end bins extend to the support's
    ends), so ``factor_sizes = [num_bins] * d``. Factors are drawn with the bins'
    probabilities and observations from F_i conditioned on the bin, so the
    observations are distributed exactly as z.
    """

    def __init__(self, marginals: list, num_bins: int):
        self.marginals = marginals
        self.factor_sizes = [num_bins] * len(marginals)
        self.edges = []
        self.probabilities = []
        for marginal in marginals:
            inner = np.linspace(marginal.ppf(0.001), marginal.ppf(0.999), num_bins + 1)[1:-1]
            self.edges.append(inner)
            cdf = np.r_[0.0, marginal.cdf(inner), 1.0]
            self.probabilities.append(np.diff(cdf))

    def factors_of(self, z: np.ndarray) -> np.ndarray:
        return np.column_stack([np.digitize(z[:, i], edges) for i, edges in enumerate(self.edges)])

    def sample_factors(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        return np.column_stack(
            [random_state.choice(len(p), size=num, p=p / p.sum()) for p in self.probabilities]
        )

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
        observations = np.empty(factors.shape, dtype=float)
        for i, (marginal, edges) in enumerate(zip(self.marginals, self.edges)):
            cdf = np.r_[0.0, marginal.cdf(edges), 1.0]
            low, high = cdf[factors[:, i]], cdf[factors[:, i] + 1]
            quantiles = low + (high - low) * random_state.uniform(size=len(factors))
            observations[:, i] = marginal.ppf(np.clip(quantiles, 1e-15, 1 - 1e-15))
        return observations


# ---------------------------------------------------------------------------
# the demonstration


@dataclass
class Demonstration:
    config: TheoremConfig
    mixing: np.ndarray
    mixing_name: str
    numbers: dict[str, float]
    marginal_tests: Any  # DataFrame
    joint_tests: Any  # DataFrame
    dependence: Any  # DataFrame: Spearman of f(z)_i with z_j
    scores: Any  # DataFrame: metric -> z, f(z)
    jacobian_median: np.ndarray
    samples: dict[str, np.ndarray]
    bijection: EntanglingBijection
    notes: list[str] = field(default_factory=list)

    @property
    def checks(self) -> dict[str, bool]:
        """The deterministic claims: bijection to 1e-6 and a Jacobian without a zero entry."""
        return {
            "round trip f^-1(f(z)) = z to 1e-6": self.numbers["round_trip_max_abs_error"] <= 1e-6,
            "no zero entry in the Jacobian": self.numbers["jacobian_min_abs_entry"] > 1e-8,
        }


def demonstrate(config: TheoremConfig, registry=None) -> Demonstration:
    """Build f, sample, and measure every claim of the theorem (see the module docstring)."""
    import pandas as pd
    from scipy.stats import ks_2samp, spearmanr

    rng = np.random.default_rng(config.seed)
    names = config.marginal_names()
    marginals = [MARGINALS[name][1]() for name in names]
    if config.angle is not None:
        mixing, mixing_name = rotation(config.angle), f"rotation by {config.angle:g} degrees"
    else:
        alpha = config.alpha if config.alpha is not None else balanced_alpha(config.dims)
        mixing, mixing_name = householder(config.dims, alpha), f"Householder reflection, alpha = {alpha:.4f}"
    f = EntanglingBijection(marginals, mixing)

    def draw(num: int) -> np.ndarray:
        return np.column_stack([m.ppf(rng.uniform(size=num)) for m in marginals])

    z = draw(config.samples)
    reference = draw(config.samples)  # an independent sample of the same law
    fz = f(z)
    control = z @ mixing.T  # plain linear mixing: changes the law
    numbers: dict[str, float] = {}

    # bijection
    round_trip = f.inverse(fz)
    numbers["round_trip_max_abs_error"] = float(np.max(np.abs(round_trip - z)))
    numbers["round_trip_max_rel_error"] = float(np.max(np.abs(round_trip - z) / np.maximum(1.0, np.abs(z))))

    # marginals
    rows = []
    for i, name in enumerate(names):
        p_f = ks_2samp(fz[:, i], reference[:, i]).pvalue
        p_control = ks_2samp(control[:, i], reference[:, i]).pvalue
        p_true = _stats().kstest(fz[:, i], marginals[i].cdf).pvalue
        rows.append({"coordinate": f"z{i + 1}", "marginal": MARGINALS[name][0],
                     "KS p: f(z) vs z": p_f, "KS p: f(z) vs true CDF": p_true, "KS p: A z vs z (control)": p_control})
        numbers[f"ks_pvalue/z{i + 1}"] = float(p_f)
        numbers[f"ks_pvalue_control/z{i + 1}"] = float(p_control)
    marginal_tests = pd.DataFrame(rows).set_index("coordinate")
    numbers["ks_pvalue_min"] = float(marginal_tests["KS p: f(z) vs z"].min())

    # joint law
    subsample = min(config.samples, 1000)
    energy, p_energy = energy_test(fz[:subsample], reference[:subsample], config.permutations, rng)
    energy_control, p_energy_control = energy_test(control[:subsample], reference[:subsample], config.permutations, rng)
    pairs = [(i, j) for i in range(config.dims) for j in range(i + 1, config.dims)]
    pair_p = [histogram_pair_test(fz, reference, i, j) for i, j in pairs]
    pair_p_control = [histogram_pair_test(control, reference, i, j) for i, j in pairs]
    independence = [independence_test(fz, i, j) for i, j in pairs]
    joint_tests = pd.DataFrame(
        [
            {"test": f"energy distance, permutation ({config.permutations}), n={subsample}",
             "p: f(z) vs z": p_energy, "p: A z vs z (control)": p_energy_control},
            {"test": f"chi-square on 2-D histograms, {len(pairs)} coordinate pair(s), Bonferroni",
             "p: f(z) vs z": bonferroni(pair_p), "p: A z vs z (control)": bonferroni(pair_p_control)},
            {"test": "chi-square independence of the coordinates of f(z), Bonferroni",
             "p: f(z) vs z": bonferroni(independence), "p: A z vs z (control)": np.nan},
        ]
    ).set_index("test")
    numbers["energy_pvalue"] = p_energy
    numbers["energy_pvalue_control"] = p_energy_control
    numbers["histogram_pvalue"] = bonferroni(pair_p)
    numbers["histogram_pvalue_control"] = bonferroni(pair_p_control)
    numbers["independence_pvalue"] = bonferroni(independence)

    # entanglement: the Jacobian at interior points, and rank dependence of each output on each input
    quantiles = rng.uniform(0.02, 0.98, size=(200, config.dims))
    points = np.column_stack([m.ppf(quantiles[:, i]) for i, m in enumerate(marginals)])
    jacobian = finite_difference_jacobian(f, points)
    analytic = f.analytic_jacobian(points)
    numbers["jacobian_min_abs_entry"] = float(np.min(np.abs(jacobian)))
    numbers["jacobian_fd_vs_analytic_max_rel_error"] = float(np.max(np.abs(jacobian - analytic) / np.abs(analytic)))
    numbers["jacobian_points"] = float(len(points))
    dependence = pd.DataFrame(
        [[spearmanr(fz[:, i], z[:, j])[0] for j in range(config.dims)] for i in range(config.dims)],
        index=[f"f(z){i + 1}" for i in range(config.dims)],
        columns=[f"z{j + 1}" for j in range(config.dims)],
    )
    numbers["dependence_min_abs_spearman"] = float(np.min(np.abs(dependence.to_numpy())))

    scores, notes = _score(config, marginals, f, registry)
    for metric, row in scores.iterrows():
        numbers[f"score/{metric}/z"] = float(row["z"])
        numbers[f"score/{metric}/f_of_z"] = float(row["f(z)"])
    return Demonstration(
        config=config,
        mixing=mixing,
        mixing_name=mixing_name,
        numbers=numbers,
        marginal_tests=marginal_tests,
        joint_tests=joint_tests,
        dependence=dependence,
        scores=scores,
        jacobian_median=np.median(np.abs(jacobian), axis=0),
        samples={"z": z, "f(z)": fz, "reference": reference, "A z": control},
        bijection=f,
        notes=notes,
    )


def bonferroni(p_values: list[float]) -> float:
    """The smallest p-value times the number of tests, capped at 1 (a family-wise p-value)."""
    return float(min(1.0, min(p_values) * len(p_values)))


def _score(config: TheoremConfig, marginals, f: EntanglingBijection, registry):
    """Each metric's headline score of the representation z and of f(z), ground truth = binned z."""
    import pandas as pd

    from disentbench.core.evaluation.api import score_codes, score_representation
    from disentbench.core.registry import get_plugin_manager

    registry = registry or get_plugin_manager()
    data = LatentFactorData(marginals, config.num_bins)
    random_state = np.random.RandomState(config.seed)
    factors = data.sample_factors(config.metric_samples, random_state)
    z = data.sample_observations_from_factors(factors, random_state)
    test_factors = data.sample_factors(max(config.metric_samples // 2, 100), random_state)
    z_test = data.sample_observations_from_factors(test_factors, random_state)
    representations: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "z": lambda x: np.asarray(x, dtype=float),
        "f(z)": f,
    }
    rows, notes = {}, []
    for name in config.metrics:
        if name not in registry.plugins["metric"]:
            notes.append(f"metric {name!r} is not registered; not scored")
            continue
        registration = registry.get("metric", name)
        headline = (getattr(registration.factory, "headline", None) or (None,))[0]
        scorer = registration.factory(registration.make_config({}))
        row: dict[str, Any] = {}
        for label, represent in representations.items():
            if hasattr(scorer, "score_codes"):
                result = score_codes(name, represent(z), factors, represent(z_test), test_factors,
                                     seed=config.seed, registry=registry)
            else:  # no array core (samples from the dataset itself): small protocol sizes
                params = _small_protocol(registration.config, config.metric_samples)
                result = score_representation(name, data, represent, seed=config.seed, registry=registry, **params)
            key = headline if headline in result else sorted(result)[0]
            row[label] = result[key]
            row["key"] = key
        rows[name] = row
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["key", "z", "f(z)"])
    return frame, notes


def _small_protocol(config_class, samples: int) -> dict[str, Any]:
    """Shrink a sampling metric's draw counts (num_train, num_eval, ...) to fit ``samples``."""
    sizes = {"num_train": samples // 4, "num_eval": samples // 8, "num_test": samples // 8,
             "num_variance_estimate": samples}
    return {key: max(value, 50) for key, value in sizes.items() if key in config_class.model_fields}


# ---------------------------------------------------------------------------
# report


def report_result(demo: Demonstration):
    """The demonstration as an :class:`~disentbench.core.analysis.contract.AnalysisResult` (paragraphs, tables, figures)."""
    import pandas as pd

    from disentbench.core.analysis.contract import AnalysisResult

    config, numbers = demo.config, demo.numbers
    names = config.marginal_names()
    marginal_text = ", ".join(f"z{i + 1} ~ {MARGINALS[n][0]}" for i, n in enumerate(names))
    result = AnalysisResult(title="Theorem 1: an entangled representation with the same distribution")
    result.paragraphs.append(
        f"Latents: {config.dims} independent coordinates, {marginal_text}; {config.samples} samples (seed "
        f"{config.seed}). f = g^-1 . h^-1 . A . h . g with g the marginal CDFs, h the standard normal quantile and "
        f"A a {demo.mixing_name}; its smallest entry in magnitude is {np.min(np.abs(demo.mixing)):.3f}."
    )
    result.paragraphs.append(
        f"f is a bijection: f^-1(f(z)) recovers z to a largest absolute error of "
        f"{numbers['round_trip_max_abs_error']:.2e} over all {config.samples} samples."
    )
    result.paragraphs.append(
        f"f keeps every marginal: two-sample Kolmogorov-Smirnov tests of f(z) against an independent sample of "
        f"z give p-values of at least {numbers['ks_pvalue_min']:.3f}, while plain linear mixing A z (the control) "
        f"gives at most {max(numbers[k] for k in numbers if k.startswith('ks_pvalue_control/')):.1e}."
    )
    result.paragraphs.append(
        f"f keeps the joint distribution: the energy-distance permutation test gives p = "
        f"{numbers['energy_pvalue']:.3f} (control {numbers['energy_pvalue_control']:.3f}), the chi-square test on "
        f"the 2-D histograms of every pair of coordinates p = {numbers['histogram_pvalue']:.3f} (control "
        f"{numbers['histogram_pvalue_control']:.1e}), and the coordinates of f(z) test independent "
        f"(p = {numbers['independence_pvalue']:.3f})."
    )
    result.paragraphs.append(
        f"Yet f entangles completely: the finite-difference Jacobian at {int(numbers['jacobian_points'])} interior "
        f"points has no zero entry (smallest |df_i/dz_j| = {numbers['jacobian_min_abs_entry']:.3g}; it matches the "
        f"analytic Jacobian to a relative error of {numbers['jacobian_fd_vs_analytic_max_rel_error']:.1e}), and "
        f"every output coordinate is rank-correlated with every input coordinate (smallest |Spearman rho| "
        f"{numbers['dependence_min_abs_spearman']:.2f})."
    )
    if len(demo.scores):
        parts = [f"{metric} {row['z']:.2f} for z vs {row['f(z)']:.2f} for f(z)" for metric, row in demo.scores.iterrows()]
        result.paragraphs.append(
            f"Disentanglement metrics, with the ground-truth factors the {config.num_bins}-bin discretisation of "
            f"each z_i: " + "; ".join(parts) + ". Both representations have the same distribution, so no method "
            "that sees only observations can prefer one over the other."
        )
    result.summary = (
        f"round trip error {numbers['round_trip_max_abs_error']:.1e}; KS p >= {numbers['ks_pvalue_min']:.2f}; "
        f"energy p = {numbers['energy_pvalue']:.2f}; min |Jacobian| {numbers['jacobian_min_abs_entry']:.2g}"
        + "".join(f"; {m} {r['z']:.2f} (z) vs {r['f(z)']:.2f} (f(z))" for m, r in demo.scores.iterrows())
    )
    result.notes.extend(demo.notes)
    result.tables["Marginals: Kolmogorov-Smirnov p-values"] = demo.marginal_tests
    result.tables["Joint distribution: two-sample and independence tests"] = demo.joint_tests
    result.tables["Spearman rank correlation of each output f(z)_i with each input z_j"] = demo.dependence
    result.tables["Median |df_i/dz_j| over the Jacobian points"] = pd.DataFrame(
        demo.jacobian_median, index=demo.dependence.index, columns=demo.dependence.columns
    )
    result.tables["Mixing matrix A"] = pd.DataFrame(demo.mixing, index=demo.dependence.columns, columns=demo.dependence.columns)
    if len(demo.scores):
        result.tables["Metric scores of the representations z and f(z)"] = demo.scores
    result.figures.update(_figures(demo))
    result.numbers.update(numbers)
    return result


def _figures(demo: Demonstration) -> dict[str, Any]:
    import pandas as pd

    from disentbench.core.analysis.plots import heatmap, new_figure

    z, fz, reference, control = (demo.samples[k] for k in ("z", "f(z)", "reference", "A z"))
    shown = min(len(z), 3000)
    colour = z[:shown, 0]
    figures = {}

    figure = new_figure(12, 4)
    axes = figure.subplots(1, 3)
    for ax, sample, title in zip(axes, (z, fz, control), ("z", "f(z): same law, entangled", "A z: linear mixing (control)")):
        points = ax.scatter(sample[:shown, 0], sample[:shown, 1], c=colour, s=3, cmap="viridis")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("coordinate 1")
        ax.set_ylabel("coordinate 2")
    figure.colorbar(points, ax=axes[-1], label="z1 of the same sample")
    figure.suptitle("Samples (first two coordinates), coloured by z1: f moves each point but keeps the cloud")
    figures["samples"] = figure

    dims = z.shape[1]
    columns = min(dims, 4)
    rows = -(-dims // columns)
    figure = new_figure(3.5 * columns, 2.8 * rows + 0.5)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for i in range(dims):
        ax = axes[i]
        low, high = np.quantile(reference[:, i], [0.001, 0.995])
        bins = np.linspace(min(low, np.quantile(control[:, i], 0.001)), max(high, np.quantile(control[:, i], 0.995)), 60)
        ax.hist(reference[:, i], bins=bins, density=True, histtype="step", color="C0", label="z (reference)")
        ax.hist(fz[:, i], bins=bins, density=True, histtype="step", color="C1", label="f(z)")
        ax.hist(control[:, i], bins=bins, density=True, histtype="step", color="0.6", linestyle="--", label="A z")
        grid = np.linspace(bins[0], bins[-1], 400)
        ax.plot(grid, demo.bijection.marginals[i].pdf(grid), color="k", linewidth=0.8, label="true density")
        ax.set_title(f"coordinate {i + 1}", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax in axes[dims:]:
        ax.set_visible(False)
    figure.suptitle("Marginals: f(z) matches z, the plain mixing A z does not")
    figures["marginals"] = figure

    # images of coordinate lines: every output coordinate moves along every input line
    figure = new_figure(10, 4.5)
    left, right = figure.subplots(1, 2)
    marginals = demo.bijection.marginals
    levels = np.linspace(0.05, 0.95, 7)
    sweep = np.linspace(0.01, 0.99, 200)
    medians = np.array([m.ppf(0.5) for m in marginals])
    for k, level in enumerate(levels):
        for ax, fixed in ((left, 1), (right, 0)):
            points = np.tile(medians, (len(sweep), 1))
            points[:, 1 - fixed] = marginals[1 - fixed].ppf(sweep)
            points[:, fixed] = marginals[fixed].ppf(level)
            ax.plot(*demo.bijection(points)[:, :2].T, color=f"C{k}", linewidth=1)
    left.set_title("images of lines z2 = const (z1 varies)", fontsize=9)
    right.set_title("images of lines z1 = const (z2 varies)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("f(z)1")
        ax.set_ylabel("f(z)2")
    figure.suptitle("f bends every coordinate line across both output coordinates")
    figures["coordinate lines"] = figure

    figure = new_figure(4 + 0.6 * dims, 3 + 0.5 * dims)
    ax = figure.subplots()
    heatmap(ax, pd.DataFrame(demo.jacobian_median, index=[f"f(z){i+1}" for i in range(dims)],
                             columns=[f"z{j+1}" for j in range(dims)]),
            vmin=0, vmax=float(np.max(demo.jacobian_median)), cmap="viridis", title="median |df_i/dz_j|")
    figures["jacobian"] = figure

    if len(demo.scores):
        figure = new_figure(2 + 1.6 * len(demo.scores), 3.5)
        ax = figure.subplots()
        positions = np.arange(len(demo.scores))
        ax.bar(positions - 0.2, demo.scores["z"], width=0.4, label="representation = z")
        ax.bar(positions + 0.2, demo.scores["f(z)"], width=0.4, label="representation = f(z)")
        ax.set_xticks(positions, list(demo.scores.index))
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title("Same distribution, different scores", fontsize=10)
        figures["scores"] = figure
    return figures


def run_theorem(
    config: TheoremConfig,
    out_dir,
    *,
    tracking_uri: str | None = None,
    experiment: str = "theorem1",
    log: bool = True,
    registry=None,
):
    """Demonstrate, write the HTML report to ``out_dir`` and log it to MLflow. Returns (demo, report, run_id)."""
    from disentbench.core.analysis.contract import AnalysisOutcome
    from disentbench.core.analysis.report import log_report, write_report

    demo = demonstrate(config, registry)
    result = report_result(demo)
    overview = [
        ("dimensions", str(config.dims)),
        ("marginals", ", ".join(MARGINALS[n][0] for n in config.marginal_names())),
        ("mixing", demo.mixing_name),
        ("samples", str(config.samples)),
        ("seed", str(config.seed)),
    ]
    report = write_report(
        out_dir,
        [AnalysisOutcome("theorem1", "Constructive demonstration of Theorem 1 (Locatello et al. 2019)", result)],
        title="Theorem 1: disentanglement is not identifiable without inductive biases",
        overview=overview,
        intro="For any latent distribution with independent non-Gaussian coordinates there are infinitely many "
        "bijections f with f(z) distributed exactly like z but with every output depending on every input. "
        "Below, one of them is built and every part of that claim is measured.",
    )
    run_id = None
    if log:
        params = {"dims": config.dims, "marginals": ",".join(config.marginal_names()), "mixing": demo.mixing_name,
                  "samples": config.samples, "seed": config.seed, "num_bins": config.num_bins}
        run_id = log_report(report, tracking_uri=tracking_uri, experiment=experiment, kind="theorem",
                            params=params, run_name=f"theorem1 d={config.dims} seed={config.seed}")
    return demo, report, run_id
