import sys

import pytest


def pytest_configure(config):
    # Hermetic plugin registry: get_plugin_manager() skips third-party entry
    # points inside the test run (tests that need them build their own registry).
    sys._called_from_test = True


@pytest.fixture
def registry():
    from disentbench.core.plugins import build_registry

    return build_registry(load_entry_points=False)


def registry_with_model(name, config, factory, description="test model"):
    """The built-in registry plus one test model plugin, registered through the real hook."""
    from disentbench import hookimpl
    from disentbench.core.plugins import build_registry

    class Plugin:
        __name__ = f"{name}-test-plugin"

        @staticmethod
        @hookimpl
        def register_models(register):
            register(name, config=config, factory=factory, description=description)

    return build_registry(load_entry_points=False, extra_plugins=[Plugin])
