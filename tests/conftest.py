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
