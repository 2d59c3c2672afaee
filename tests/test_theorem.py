"""Theorem 1 demonstration: f is a bijection, keeps the law of z, entangles every coordinate;
z scores high on MIG and f(z) low."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from disentbench.core.cli.main import main
from disentbench.core.theorem import (
    MARGINALS,
    EntanglingBijection,
    TheoremConfig,
    balanced_alpha,
    demonstrate,
    householder,
    rotation,
)


@pytest.fixture(scope="module")
def demo():
    return demonstrate(TheoremConfig(samples=3000, seed=0, metrics=["mig"], permutations=100, metric_samples=1500))


def test_f_is_a_bijection_to_1e_6(demo):
    assert demo.numbers["round_trip_max_abs_error"] < 1e-6
    z = demo.samples["z"]
    assert np.max(np.abs(demo.bijection(demo.bijection.inverse(z)) - z)) < 1e-6  # both ways
    assert demo.checks == {"round trip f^-1(f(z)) = z to 1e-6": True, "no zero entry in the Jacobian": True}


def test_f_keeps_marginals_and_joint_law(demo):
    for i in (1, 2):
        assert demo.numbers[f"ks_pvalue/z{i}"] > 0.01
        assert demo.numbers[f"ks_pvalue_control/z{i}"] < 1e-6  # the tests do see a changed law
    assert demo.numbers["energy_pvalue"] > 0.01 and demo.numbers["histogram_pvalue"] > 0.01
    assert demo.numbers["histogram_pvalue_control"] < 1e-6
    assert demo.numbers["independence_pvalue"] > 0.01


def test_f_is_fully_entangled(demo):
    assert demo.numbers["jacobian_min_abs_entry"] > 1e-3  # no zero entry at any of the points
    assert demo.numbers["jacobian_fd_vs_analytic_max_rel_error"] < 1e-4
    assert demo.numbers["dependence_min_abs_spearman"] > 0.3  # every output moves with every input


def test_z_scores_high_and_f_of_z_low_on_mig(demo):
    scores = demo.scores.loc["mig"]
    assert scores["key"] == "discrete_mig"
    assert scores["z"] > 0.7 and scores["f(z)"] < 0.2


@pytest.mark.parametrize("dims", [2, 3, 5, 10])
def test_householder_family_is_orthogonal_without_zero_entries(dims):
    for alpha in (0.01, balanced_alpha(dims), 0.3, 0.49):
        mixing = householder(dims, alpha)
        assert np.allclose(mixing @ mixing.T, np.eye(dims))
        assert np.min(np.abs(mixing)) > 1e-6
    assert np.allclose(np.abs(householder(dims, balanced_alpha(dims))[0]), 1 / np.sqrt(dims))


def test_bijection_round_trip_for_every_marginal_in_several_dimensions():
    names = list(MARGINALS)
    marginals = [MARGINALS[name][1]() for name in names]
    f = EntanglingBijection(marginals, householder(len(names), 0.2))
    rng = np.random.default_rng(1)
    z = np.column_stack([m.ppf(rng.uniform(size=2000)) for m in marginals])
    assert np.max(np.abs(f.inverse(f(z)) - z) / np.maximum(1, np.abs(z))) < 1e-6
    g = EntanglingBijection(marginals[:2], rotation(30))
    assert np.max(np.abs(g.inverse(g(z[:, :2])) - z[:, :2])) < 1e-6


def test_theorem_cli_writes_report(tmp_path):
    out = tmp_path / "theorem"
    result = CliRunner().invoke(
        main,
        ["theorem", "--samples", "1000", "--metrics", "mig", "--marginals", "laplace,beta", "--out", str(out),
         "--no-log"],
    )
    assert result.exit_code == 0, result.output
    assert "ok   round trip f^-1(f(z)) = z to 1e-6" in result.output
    assert "ok   no zero entry in the Jacobian" in result.output
    page = (out / "report.html").read_text()
    assert "Laplace(0, 1)" in page and "Beta(2, 5)" in page
    assert page.count("data:image/png;base64,") == 5  # samples, marginals, coordinate lines, jacobian, scores
    assert {p.stem.split("__")[1] for p in (out / "figures").glob("*.png")} == {
        "samples", "marginals", "coordinate_lines", "jacobian", "scores"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--marginals", "gaussian"], "unknown marginal(s) gaussian"),
        (["--dims", "1"], "--dims"),
        (["--dims", "3", "--angle", "30"], "2-D only"),
        (["--angle", "90"], "multiple of 90"),
        (["--alpha", "0.5"], "--alpha"),
    ],
)
def test_theorem_bad_input_exits_2(args, message):
    result = CliRunner().invoke(main, ["theorem", "--no-log", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
