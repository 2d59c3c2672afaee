import sys

import pytest


def pytest_configure(config):
    # Hermetic plugin registry: get_plugin_manager() skips third-party entry
    # points inside the test run (tests that need them build their own registry).
    sys._called_from_test = True


@pytest.fixture
def registry():
    from disentbench.core.registry import build_registry

    return build_registry(load_entry_points=False)






@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory with the default store (./mlflow.db), a fresh data root, no
    $MLFLOW_TRACKING_URI and no $DISENTBENCH_LOAD_PLUGINS."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DISENTBENCH_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("DISENTBENCH_DATA", str(tmp_path / "data"))
    return work


