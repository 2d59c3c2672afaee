"""The parity suite's guard: a missing or wrongly pinned reference skips with a one-line reason, never errors.

Run in a subprocess whose path shadows the installed gin-config's metadata
with a 0.5.0 one (the version that breaks disentanglement_lib's imports), and
with no reference at all; under ``DISENTBENCH_REQUIRE_PARITY=1`` (``.ci/run``)
the same problem fails instead, so CI cannot skip parity silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REFERENCE_INSTALL, reference_problem

ROOT = Path(__file__).resolve().parent.parent


def _fake_distribution(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _run_parity(site: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), **env}
    if "DISENTBENCH_REQUIRE_PARITY" not in env:
        environment.pop("DISENTBENCH_REQUIRE_PARITY", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_parity_dlib.py")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_wrong_gin_version_skips_with_a_reason(tmp_path):
    _fake_distribution(tmp_path, "gin-config", "0.5.0")
    _fake_distribution(tmp_path, "disentanglement-lib", "1.5")
    result = _run_parity(tmp_path)
    assert result.returncode == 5, result.stdout + result.stderr  # pytest's "no tests ran": the module skipped
    assert "1 skipped" in result.stdout, result.stdout
    lines = [line for line in result.stdout.splitlines() if "gin-config 0.5.0 is installed" in line]
    assert lines and "gin-config==0.4.0" in lines[0], result.stdout


def test_wrong_pin_fails_where_parity_is_required(tmp_path):
    _fake_distribution(tmp_path, "gin-config", "0.5.0")
    _fake_distribution(tmp_path, "disentanglement-lib", "1.5")
    result = _run_parity(tmp_path, DISENTBENCH_REQUIRE_PARITY="1")
    assert result.returncode != 0
    assert "parity with disentanglement_lib required but unavailable" in result.stdout


def test_reference_problem_names_the_fix(monkeypatch):
    import importlib.metadata

    versions = {"disentanglement-lib": "1.5", "gin-config": "0.4.0"}

    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert reference_problem() is None
    versions["gin-config"] = "0.5.0"
    assert reference_problem() == f"gin-config 0.5.0 is installed, the parity tests need gin-config==0.4.0 ({REFERENCE_INSTALL})"
    del versions["disentanglement-lib"]
    problem = reference_problem()
    assert problem is not None and problem.startswith("disentanglement-lib is not installed") and "\n" not in problem


@pytest.mark.skipif(reference_problem() is not None, reason="the pinned reference is not installed here")
def test_pinned_reference_runs_the_parity_suite():
    """Where the pinned reference is installed, the parity suite runs: nothing in it is skipped."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--collect-only",
         str(ROOT / "tests" / "test_parity_dlib.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and "skipped" not in result.stdout, result.stdout
    assert "test_study_mode_evaluation_equals_the_reference_pipeline" in result.stdout
