"""The plugin registry: every built-in registers in one line through the public hooks, and bad registrations are reported.

Plugin failures are also covered end to end (pip-installed broken packages) in
test_plugin_example.py and test_bad_inputs.py; this file checks the
``register`` callback itself.
"""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel

from disentbench import PluginConfig, hookimpl
from disentbench.core.registry import KINDS, build_registry

#: Built-in registrations deliberately left in the keyword form ``register(name, config=, factory=)``,
#: as ``(kind, name): reason``. None today: every built-in factory is a class that names itself.
KEYWORD_FORM: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("kind", list(KINDS))
def test_builtins_use_the_one_line_registration(registry, kind):
    # A class registered as register(cls) carries what the registry shows, so the
    # two cannot drift apart; third-party authors copy what the built-ins do.
    builtins = [r for r in registry.all(kind) if r.source == "disentbench"]
    assert builtins
    for registration in builtins:
        if (kind, registration.name) in KEYWORD_FORM:
            continue
        factory = registration.factory
        assert isinstance(factory, type), registration.name
        # set on the class itself, not inherited from the plugin it specialises
        assert {"name", "description"} <= set(vars(factory)), registration.name
        assert factory.name == registration.name
        assert factory.config_class is registration.config, registration.name
        assert factory.description == registration.description, registration.name
    stale = {name for k, name in KEYWORD_FORM if k == kind} - {r.name for r in builtins}
    assert not stale


class _Config(PluginConfig):
    size: int = 1


def _registry_with(*calls):
    """A registry with one test plugin whose register_metrics makes ``calls`` (each ``(args, kwargs)``)."""

    @hookimpl
    def register_metrics(register):
        for args, kwargs in calls:
            register(*args, **kwargs)

    plugin = types.ModuleType("registry-test-plugin")  # the name the registry reports as the source
    plugin.register_metrics = register_metrics
    return build_registry(load_entry_points=False, extra_plugins=[plugin])


class Named:
    name = "named_metric"
    description = "a metric that names itself"
    config_class = _Config

    def __init__(self, config=None):
        self.config = config


def test_register_cls_reads_name_config_and_description_from_the_class():
    registry = _registry_with(((Named,), {}))
    registration = registry.get("metric", "named_metric")
    assert registration.factory is Named and registration.config is _Config
    assert registration.description == "a metric that names itself"
    assert registration.source == "registry-test-plugin"
    assert not registry.problems


def test_register_cls_may_override_the_description():
    registry = _registry_with(((Named,), {"description": "shorter"}))
    assert registry.get("metric", "named_metric").description == "shorter"


def test_keyword_form_still_registers_a_function_factory():
    def factory(config):
        return Named(config)

    registry = _registry_with((("by_keyword",), {"config": _Config, "factory": factory, "description": "spelled out"}))
    registration = registry.get("metric", "by_keyword")
    assert registration.factory is factory and registration.description == "spelled out"


class Unnamed:
    config_class = _Config


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (((Unnamed,), {}), "needs the class to set `name`"),
        ((("no_factory",), {"config": _Config}), "needs config= and factory="),
        ((("bad_config",), {"config": dict, "factory": dict}), "config must be a pydantic BaseModel subclass"),
        (
            (("mig",), {"config": _Config, "factory": Named}),
            "metric plugin 'mig' is already registered by 'disentbench'",
        ),
        (((Named,), {}), "metric plugin 'named_metric' is registered twice by this plugin"),
    ],
)
def test_a_bad_registration_skips_its_whole_plugin_in_one_line(call, message):
    registry = _registry_with(((Named,), {}), call)
    (problem,) = registry.problems
    assert problem.source == "registry-test-plugin" and "\n" not in str(problem)
    assert message in problem.error, problem.error
    assert "plugin 'registry-test-plugin' of package 'registry-test-plugin' skipped entirely" in problem.error
    with pytest.raises(KeyError):  # the plugin's good registration is not kept either
        registry.get("metric", "named_metric")
    assert registry.get("metric", "mig").source == "disentbench"  # a built-in is never taken over


class _Model:
    name = "companion_vae"
    description = "a model shipped with its metric"
    config_class = _Config


def _two_hook_plugin(name: str, metric_name: str):
    """A plugin registering a model and, from another hook, a metric called ``metric_name``."""

    class Metric(Named):
        pass

    Metric.name = metric_name

    @hookimpl
    def register_models(register):
        register(_Model)

    @hookimpl
    def register_metrics(register):
        register(Metric)

    plugin = types.ModuleType(name)
    plugin.register_models = register_models
    plugin.register_metrics = register_metrics
    return plugin


def test_a_clash_in_one_hook_drops_what_the_plugin_registered_in_its_other_hooks():
    # issue 24: a plugin whose registration clashed was only partly skipped (its model stayed, its metric not)
    clashing = _two_hook_plugin("clashing-plugin", "dci")
    registry = build_registry(load_entry_points=False, extra_plugins=[clashing])
    assert "companion_vae" not in registry.names("model")
    assert registry.get("metric", "dci").source == "disentbench"
    (problem,) = registry.problems
    assert str(problem) == (
        "plugin 'clashing-plugin': metric plugin 'dci' is already registered by 'disentbench'; rename it; "
        "plugin 'clashing-plugin' of package 'clashing-plugin' skipped entirely "
        "(not registered: model 'companion_vae', metric 'dci')"
    )


def test_a_plugin_that_clashes_with_another_third_party_plugin_is_skipped_and_the_first_kept():
    first = _two_hook_plugin("first-plugin", "shared_metric")
    second = _two_hook_plugin("second-plugin", "shared_metric")
    second.register_models = hookimpl(lambda register: None)  # only the metric clashes
    registry = build_registry(load_entry_points=False, extra_plugins=[first, second])
    assert registry.get("metric", "shared_metric").source == registry.get("model", "companion_vae").source
    kept = registry.get("metric", "shared_metric").source
    (problem,) = registry.problems
    assert problem.source != kept and "is already registered by " + repr(kept) in problem.error
    assert "skipped entirely (not registered: metric 'shared_metric')" in problem.error


def test_a_hook_that_raises_drops_the_plugins_other_registrations():
    plugin = _two_hook_plugin("raising-plugin", "fine_metric")

    @hookimpl
    def register_metrics(register):
        register(Named)
        raise RuntimeError("half done")

    plugin.register_metrics = register_metrics
    registry = build_registry(load_entry_points=False, extra_plugins=[plugin])
    assert "companion_vae" not in registry.names("model") and "named_metric" not in registry.names("metric")
    (problem,) = registry.problems
    assert "register_metrics: RuntimeError: half done" in problem.error and "skipped entirely" in problem.error


def test_every_config_is_strict():
    """Unknown keys are errors for every built-in plugin, so a typo in a study config never passes silently."""
    for registration in build_registry(load_entry_points=False).all():
        assert issubclass(registration.config, BaseModel)
        assert registration.config.model_config.get("extra") == "forbid", registration.name
