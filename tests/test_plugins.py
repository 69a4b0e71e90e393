"""Plugin manager and registries: discovery, validation, errors."""

from __future__ import annotations

import pluggy
import pytest

from gmbench import hookimpl
from gmbench.budget import Budget
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.registry import RegistryError
from tests.plugins.fake_methods import GaussianFit, TinyGAN


def _registries(*plugins, entrypoints=False):
    return Registries(make_plugin_manager(extra_plugins=plugins, load_entrypoints=entrypoints))


class Methods:
    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def gmbench_register_methods(self, register):
        for c in self.classes:
            register(c)


def test_builtin_methods_are_found_through_entry_points():
    reg = _registries(entrypoints=True)
    assert {"ddpm", "vae", "mdlm"} <= set(reg.methods.names())
    dist, _, version = reg.methods.origin("ddpm").partition(" ")
    assert dist == "gmbench" and version


def test_builtin_datasets_metrics_budgets_are_registered_like_plugins():
    reg = _registries()
    assert {"8gaussians", "checkerboard", "moons", "spirals", "rings", "digits", "synthlang"} <= set(reg.datasets.names())
    assert {"smoke", "small", "standard", "large"} <= set(reg.budgets.names())
    assert "likelihood" in reg.metrics.names()


def test_each_manager_is_fresh():
    a = _registries(Methods(GaussianFit))
    b = _registries()
    assert "gaussfit" in a.methods and "gaussfit" not in b.methods


def test_duplicate_names_are_rejected():
    with pytest.raises(RegistryError, match="method 'gaussfit' registered twice"):
        _registries(Methods(GaussianFit), Methods(GaussianFit)).methods


def test_wrong_types_are_rejected():
    with pytest.raises(RegistryError, match="expected a subclass of Method"):
        _registries(Methods(object)).methods

    class BadBudget:
        @hookimpl
        def gmbench_register_budgets(self, register):
            register({"name": "x"})

    with pytest.raises(RegistryError, match="expected an instance of Budget"):
        _registries(BadBudget()).budgets


def test_unknown_name_suggests_the_closest():
    reg = _registries(Methods(GaussianFit, TinyGAN))
    with pytest.raises(RegistryError, match="unknown method 'tinygn'. Did you mean 'tinygan'"):
        reg.methods.get("tinygn")
    assert reg.methods.select("all") == ["gaussfit", "tinygan"]
    assert reg.methods.select("tinygan, gaussfit") == ["tinygan", "gaussfit"]


def test_misspelt_hook_fails_loudly():
    class Misspelt:
        @hookimpl
        def gmbench_register_method(self, register):  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'gmbench_register_method'"):
        make_plugin_manager(extra_plugins=(Misspelt(),), load_entrypoints=False)


def test_hook_implementations_may_take_a_subset_of_arguments():
    class NoArgs:
        called = False

        @hookimpl
        def gmbench_register_budgets(self):
            NoArgs.called = True

    _registries(NoArgs()).budgets
    assert NoArgs.called


def test_a_plugin_may_add_a_budget():
    class MyBudget:
        @hookimpl
        def gmbench_register_budgets(self, register):
            register(Budget("mine", {"toy2d": 1.0}, {"toy2d": 1}, 1.0, "tiny", {"toy2d": 1}, (1,)))

    assert _registries(MyBudget()).budgets.get("mine").name == "mine"


def test_external_plugins_can_be_blocked(monkeypatch):
    import types

    from gmbench import plugins
    from tests.plugins.fake_methods import GaussianFit

    class Outside(GaussianFit):
        name = "outside-gmm"

    class _Dist:  # a third-party distribution's entry point, whether or not one is installed here
        name, version = "gmbench-outside", "0.1.0"

    class _EntryPoint:
        name, dist = "outside", _Dist()

        def load(self):
            return Methods(Outside)

    installed = plugins.md.entry_points
    monkeypatch.setattr(plugins, "md", types.SimpleNamespace(
        entry_points=lambda group: [*installed(group=group), _EntryPoint()]))
    assert "outside-gmm" in _registries(entrypoints=True).methods.names()  # loaded by default
    monkeypatch.setenv("GMBENCH_DISABLE_EXTERNAL_PLUGINS", "1")
    reg = _registries(entrypoints=True)
    assert "outside-gmm" not in reg.methods.names() and "ddpm" in reg.methods.names()
    assert all(reg.methods.origin(n).startswith("gmbench ") for n in reg.methods.names())
