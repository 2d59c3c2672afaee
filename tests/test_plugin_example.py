"""The third-party plugin contract, end to end: pip-installed packages found through entry points.

``examples/plugin_example`` (distribution ``disentbench-plugin-example``) is
built and installed with pip, then must appear in ``disentbench plugins`` and
in :func:`build_registry`, and its model and metric must work. Two deliberately
bad packages, built here and installed beside it, check that a plugin that
fails to import or takes a built-in's name is reported by distribution name and
breaks nothing.

Packages are installed with ``pip install --target`` into a temporary folder
that is put on ``PYTHONPATH`` (subprocesses) or ``sys.path`` (in-process),
not into the shared site-packages: entry points are discovered from
``sys.path`` either way, and no package (least of all a broken one) can be
left installed for everyone if this run is killed, nor show up in other
tests' ``disentbench plugins`` calls while it runs. Not marked slow: one pip
install and two concurrent CLI calls, a few seconds each.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_env, start_pip_install, write_project

from disentbench.core.contracts import Model
from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.registry import LOAD_PLUGINS_ENV, build_registry

pytest.importorskip("setuptools", reason="building the plugin packages needs setuptools (no build isolation)")

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SOURCE = REPO_ROOT / "examples" / "plugin_example"
EXAMPLE_DIST = "disentbench-plugin-example"
EXAMPLE_IMPORT_PACKAGE = "disentbench_plugin_example"
BROKEN_IMPORT_DIST = "disentbench-test-broken-import"
BROKEN_IMPORT_MESSAGE = "deliberately broken plugin: needs missing_dependency_xyz"
DUPLICATE_DIST = "disentbench-test-duplicate"
LOSS_TERMS = {"reconstruction", "kl", "regularizer", "elbo", "total"}






def write_bad_projects(workdir: Path) -> list[Path]:
    broken_import = write_project(
        workdir / "broken_import",
        BROKEN_IMPORT_DIST,
        "disentbench_test_broken_import",
        "broken_import",
        f"""\
        raise ImportError({BROKEN_IMPORT_MESSAGE!r})
        """,
    )
    duplicate = write_project(
        workdir / "duplicate",
        DUPLICATE_DIST,
        "disentbench_test_duplicate",
        "duplicate_beta_vae",
        """\
        from disentbench import hookimpl
        from disentbench.core.contracts import ModelConfig


        class ImpostorConfig(ModelConfig):
            pass


        def impostor_factory(config, observation_shape):
            raise AssertionError("the built-in beta_vae must not be replaced")


        @hookimpl
        def register_models(register):
            register("beta_vae", config=ImpostorConfig, factory=impostor_factory, description="impostor")
        """,
    )
    return [broken_import, duplicate]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """One folder holding the example package and the two bad ones, installed by a single pip call."""
    workdir = tmp_path_factory.mktemp("plugin_packages")
    # Build from a copy so that setuptools' build/ and *.egg-info stay out of the source tree.
    example = shutil.copytree(
        EXAMPLE_SOURCE, workdir / "example_src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = workdir / "site"
    install = start_pip_install(site, example, *write_bad_projects(workdir / "bad_src"))
    output, _ = install.communicate(timeout=300)
    assert install.returncode == 0, f"pip install failed:\n{output}"
    yield site
    shutil.rmtree(workdir, ignore_errors=True)




@dataclass
class CLIResult:
    returncode: int
    stdout: str
    stderr: str

    def rows(self) -> dict[tuple[str, str], str]:
        """Source of each listed plugin, by (kind, name); the exit status must be 0."""
        assert self.returncode == 0, f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return {(row["kind"], row["name"]): row["source"] for row in json.loads(self.stdout)}


@pytest.fixture(scope="module")
def cli_runs(plugin_site) -> dict[str, CLIResult]:
    """``disentbench plugins --json`` in fresh interpreters, started at once (each spends seconds importing)."""
    envs = {"all": cli_env(plugin_site), "hidden": cli_env(plugin_site, load_plugins="nonexistent")}
    command = [sys.executable, "-m", "disentbench.core.cli.main", "plugins", "--json"]
    processes = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
        for name, env in envs.items()
    }
    results = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=300)
            results[name] = CLIResult(process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    return results


@contextmanager
def on_sys_path(site: Path, monkeypatch):
    """Make ``site`` importable and discoverable by importlib.metadata, then forget its modules."""
    monkeypatch.delenv(LOAD_PLUGINS_ENV, raising=False)
    before = set(sys.modules)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        for name in set(sys.modules) - before:
            if name.startswith((EXAMPLE_IMPORT_PACKAGE, "disentbench_test_")):
                del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture
def one_torch_thread():
    # Tensors this small gain nothing from intra-op threads, and on a busy
    # 2-core machine OpenMP's spinning made 40 steps take seconds instead of 0.1 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def registry_with_plugins(plugin_site, monkeypatch):
    with on_sys_path(plugin_site, monkeypatch):
        yield build_registry(load_entry_points=True)


class TinyGrid(GroundTruthData):
    """3 x 4 factors, random 1 x 8 x 8 images: just enough for a metric to draw from."""

    name = "tiny_grid"
    factor_names = ("a", "b")
    factor_sizes = (3, 4)

    def __init__(self, seed: int = 0):
        self._images = np.random.RandomState(seed).randint(0, 256, size=(12, 1, 8, 8)).astype(np.uint8)

    @property
    def images(self) -> np.ndarray:
        return self._images


# -- through the command line, as a user sees it -----------------------------


def test_cli_lists_the_example_plugins_from_the_installed_distribution(cli_runs):
    run = cli_runs["all"]
    sources = run.rows()
    assert sources[("model", "mlp_vae")] == EXAMPLE_DIST
    assert sources[("metric", "code_std")] == EXAMPLE_DIST
    assert EXAMPLE_DIST not in run.stderr, run.stderr  # the bad packages beside it are not its problem


def test_cli_load_plugins_env_hides_entry_points_not_named(cli_runs):
    run = cli_runs["hidden"]
    sources = run.rows()
    assert ("model", "mlp_vae") not in sources
    assert ("metric", "code_std") not in sources
    assert sources[("model", "beta_vae")] == "disentbench"
    # the bad packages were not even imported; the one problem is the name no package provides
    problems = [line for line in run.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "$DISENTBENCH_LOAD_PLUGINS" in problems[0] and "nonexistent" in problems[0], run.stderr
    assert "ImportError" not in run.stderr and "already registered" not in run.stderr


def test_cli_survives_broken_and_duplicate_plugins(cli_runs):
    run = cli_runs["all"]
    sources = run.rows()  # exit status 0 and valid JSON on stdout despite the problems
    for builtin in [("model", "beta_vae"), ("metric", "mig"), ("executor", "local")]:
        assert sources[builtin] == "disentbench", builtin
    problems = [line for line in run.stderr.splitlines() if line.startswith("problem:")]
    assert any(BROKEN_IMPORT_DIST in line and "ImportError" in line and BROKEN_IMPORT_MESSAGE in line
               for line in problems), run.stderr  # fmt: skip
    assert any(DUPLICATE_DIST in line and "already registered" in line and "beta_vae" in line
               and f"plugin 'duplicate_beta_vae' of package {DUPLICATE_DIST!r} skipped entirely" in line
               for line in problems), run.stderr  # fmt: skip


# -- in-process, through the registry ----------------------------------------


def test_build_registry_finds_the_example_plugins(registry_with_plugins):
    model = registry_with_plugins.get("model", "mlp_vae")
    metric = registry_with_plugins.get("metric", "code_std")
    assert model.source == metric.source == EXAMPLE_DIST
    assert model.description and metric.description
    assert not [p for p in registry_with_plugins.problems if p.source == EXAMPLE_DIST]
    config = model.make_config()
    assert (config.hidden, config.beta) == (256, 1.0)
    assert metric.make_config().num_points == 1000
    with pytest.raises(ValueError, match="extra"):
        model.make_config({"hiden": 128})  # a typo is an error, not a silently ignored key


def test_mlp_vae_implements_the_model_contract_and_trains(registry_with_plugins, one_torch_thread):
    registration = registry_with_plugins.get("model", "mlp_vae")
    config = registration.make_config({"num_latent": 4, "hidden": 32, "beta": 2.0, "learning_rate": 1e-3})
    torch.manual_seed(0)
    model = registration.factory(config, (1, 8, 8))
    assert isinstance(model, Model)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (16, 4)
    assert model.decode(mean).shape == x.shape

    optimizers = model.optimizers()
    assert model.optimizers() is optimizers, "optimizers() must be built once and cached"
    assert len(optimizers) == 1 and optimizers[0][1] == "total"
    optimizer = optimizers[0][0]
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {id(p) for p in model.parameters()}

    terms = model.loss(x, 0, torch.Generator().manual_seed(2))
    assert LOSS_TERMS <= set(terms)
    assert all(t.ndim == 0 for t in terms.values()), terms
    torch.testing.assert_close(terms["regularizer"], 2.0 * terms["kl"])
    torch.testing.assert_close(terms["total"], terms["reconstruction"] + terms["regularizer"])
    torch.testing.assert_close(terms["elbo"], -(terms["reconstruction"] + terms["kl"]))

    generator = torch.Generator().manual_seed(2)
    totals = []
    for step in range(40):
        terms = model.loss(x, step, generator)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        totals.append(terms["total"].item())
    assert all(math.isfinite(t) for t in totals), totals
    assert np.mean(totals[-5:]) < np.mean(totals[:5]), totals


def test_code_std_scores_a_tiny_dataset(registry_with_plugins):
    metric = registry_with_plugins.get("metric", "code_std")
    score = metric.factory(metric.make_config({"num_points": 50}))
    data = TinyGrid()
    projection = np.random.RandomState(3).randn(64, 5)

    def representation_function(observations: np.ndarray) -> np.ndarray:
        assert observations.shape[1:] == (1, 8, 8) and observations.dtype == np.float32
        return observations.reshape(len(observations), -1) @ projection

    scores = score(data, representation_function, np.random.RandomState(0))
    assert set(scores) == {"mean_std", "min_std"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert 0 < scores["min_std"] <= scores["mean_std"]
    assert score(data, representation_function, np.random.RandomState(0)) == scores  # same draws, same score

    # A constant code dimension has zero spread.
    collapsed = score(data, lambda obs: np.c_[representation_function(obs), np.zeros(len(obs))], np.random.RandomState(0))
    assert collapsed["min_std"] == 0.0


def test_broken_and_duplicate_plugins_are_reported_not_registered(registry_with_plugins):
    from disentbench.plugins.models.beta_vae import BetaVAE

    registry = registry_with_plugins
    by_source = {}
    for problem in registry.problems:
        by_source.setdefault(problem.source, []).append(problem.error)
    assert any(BROKEN_IMPORT_MESSAGE in e for e in by_source.get(BROKEN_IMPORT_DIST, [])), registry.problems
    assert any("already registered" in e for e in by_source.get(DUPLICATE_DIST, [])), registry.problems
    beta_vae = registry.get("model", "beta_vae")
    assert beta_vae.source == "disentbench" and beta_vae.factory is BetaVAE


# -- one plugin of every kind ------------------------------------------------


def test_the_example_registers_a_plugin_of_every_kind_in_one_line_each(registry_with_plugins):
    from disentbench.core.registry import KINDS

    example = {kind: [r for r in registry_with_plugins.all(kind) if r.source == EXAMPLE_DIST] for kind in KINDS}
    assert {kind: len(found) for kind, found in example.items()} == {kind: 1 for kind in KINDS}
    for (registration,) in example.values():
        # register(cls): the class named itself and is its own factory
        assert registration.factory.name == registration.name
        assert registration.factory.config_class is registration.config
        assert registration.description == registration.factory.description != ""


def _bars(registry, **params):
    registration = registry.get("dataset", "bars")
    return registration.factory(registration.make_config(params))


def _factors_from_bars(observations: np.ndarray, unit: int) -> np.ndarray:
    """A perfect representation of bars: each image's column, row and width read back from its pixels."""
    lit = observations[:, 0] > 0.5
    rows = lit.any(axis=2).argmax(axis=1)
    columns = lit.any(axis=1).argmax(axis=1)
    widths = lit.any(axis=1).sum(axis=1) // unit - 1
    return np.stack([columns // unit, rows // unit, widths], axis=1).astype(np.float64)


def test_bars_renders_its_factor_grid_in_grid_order(registry_with_plugins):
    data = _bars(registry_with_plugins, positions=4, widths=3)
    assert data.factor_sizes == (4, 4, 3) and data.observation_shape == (1, 64, 64)
    assert data.images.dtype == np.uint8 and len(data.images) == 48
    unit = 64 // (4 + 3)
    factors = data.factors_of(np.arange(48))
    recovered = _factors_from_bars(data.to_float(data.images, np.random.RandomState(0)), unit)
    np.testing.assert_array_equal(recovered, factors)  # image i shows exactly the factors of index i
    assert (data.images[data.index_of(np.array([[1, 2, 0]]))][0, 0] > 0).sum() == unit * unit
    with pytest.raises(ValueError, match="extra"):
        registry_with_plugins.get("dataset", "bars").make_config({"position": 4})


def test_nearest_centroid_reads_factors_off_a_perfect_code_and_not_off_a_constant_one(registry_with_plugins):
    data = _bars(registry_with_plugins, positions=4, widths=3)
    registration = registry_with_plugins.get("task", "nearest_centroid")
    task = registration.factory(registration.make_config({"num_train": 400, "num_test": 300}))
    perfect = task(data, lambda obs: _factors_from_bars(obs, 64 // 7), np.random.RandomState(0))
    assert min(perfect.values()) > 0.9
    # a code holding the column alone reads the column exactly
    column_only = task(data, lambda obs: _factors_from_bars(obs, 64 // 7)[:, :1], np.random.RandomState(0))
    assert column_only["factor_0"] == 1.0 and column_only["factor_1"] < 0.5
    constant = task(data, lambda obs: np.zeros((len(obs), 2)), np.random.RandomState(0))
    # every test point gets the first value: the accuracy is that value's share, about 1 / size
    for factor, size in enumerate(data.factor_sizes):
        assert abs(constant[f"factor_{factor}"] - 1 / size) < 0.1
    assert task(data, lambda obs: _factors_from_bars(obs, 64 // 7), np.random.RandomState(0)) == perfect


def test_shuffled_runs_every_job_once_in_a_seeded_order(registry_with_plugins):
    registration = registry_with_plugins.get("executor", "shuffled")

    def order(seed):
        executor = registration.factory(registration.make_config({"seed": seed}))
        return list(executor.run(list(range(20)), lambda job: ("done", job)))

    first = order(0)
    assert sorted(job for _, job in first) == list(range(20))
    assert order(0) == first and order(1) != first and first != [("done", j) for j in range(20)]


def test_score_spread_measures_the_between_seed_spread(registry_with_plugins):
    import pandas as pd

    from disentbench import StudyTable

    rows = [
        {"model": "beta_vae", "dataset": "bars", "seed": seed, "model.beta": beta,
         "eval/mean/calm/score": beta + 0.1 * seed, "eval/mean/noisy/score": beta + 0.3 * seed}
        for beta in (1.0, 4.0) for seed in range(3)
    ]  # fmt: skip
    table = StudyTable.from_frame(pd.DataFrame(rows))
    registration = registry_with_plugins.get("analysis", "score_spread")
    result = registration.factory(registration.make_config()).run(table)
    assert result.numbers == pytest.approx({table.label("eval/mean/calm/score"): 0.1, table.label("eval/mean/noisy/score"): 0.3})
    assert table.label("eval/mean/noisy/score") in result.paragraphs[0]

    from disentbench import AnalysisSkipped

    one_seed = StudyTable.from_frame(pd.DataFrame([r for r in rows if r["seed"] == 0]))
    with pytest.raises(AnalysisSkipped, match="two or more seeds"):
        registration.factory(registration.make_config()).run(one_seed)
