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


def registry_with_model(name, config, factory, description="test model"):
    """The built-in registry plus one test model plugin, registered through the real hook."""
    from disentbench import hookimpl
    from disentbench.core.registry import build_registry

    class Plugin:
        __name__ = f"{name}-test-plugin"

        @staticmethod
        @hookimpl
        def register_models(register):
            register(name, config=config, factory=factory, description=description)

    return build_registry(load_entry_points=False, extra_plugins=[Plugin])


def recorded_ops():
    """A TorchDispatchMode whose ``ops`` collects the name of every aten op run under it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    return Record()


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


def config_with(base: dict, **changes) -> dict:
    """A deep copy of ``base`` with changes at paths written a__b__0 (list indices as digits)."""
    import copy

    config = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return config
