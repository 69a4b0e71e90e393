"""Names cannot collide (issue 15.4): a third-party plugin never displaces a built-in,
new-plugin refuses a taken name, third-party runs carry their distribution in the spec
hash, and external samples are never merged with a trained method of the same name."""

from __future__ import annotations

import types

import pytest
from click.testing import CliRunner

from gmbench import plugins
from gmbench.cli import main
from gmbench.hookspecs import hookimpl
from gmbench.leaderboard import method_label, run_key
from gmbench.records import RunSpec


class _Dist:
    def __init__(self, name, version):
        self.name, self.version = name, version


class _EntryPoint:
    def __init__(self, name, dist, module):
        self.name, self.dist, self._module = name, dist, module

    def load(self):
        return self._module


def _module(tag):
    mod = types.SimpleNamespace()

    @hookimpl
    def gmbench_register_methods(register):
        pass

    mod.gmbench_register_methods = gmbench_register_methods
    mod.tag = tag
    return mod


def test_a_third_party_plugin_with_a_builtin_name_is_refused_and_named(monkeypatch):
    impostor = _EntryPoint("ddpm", _Dist("gmbench-ddpm", "9.9"), _module("impostor"))
    builtin = _EntryPoint("ddpm", _Dist("gmbench", "0.1.0"), _module("builtin"))
    # the impostor is listed first: the order of installation must not decide
    monkeypatch.setattr(plugins, "md", types.SimpleNamespace(entry_points=lambda group: [impostor, builtin]))
    with pytest.warns(UserWarning, match=r"'ddpm' of gmbench-ddpm 9.9 is not loaded: the name is taken by gmbench 0.1.0"):
        pm = plugins.make_plugin_manager()
    assert pm.get_plugin("ddpm").tag == "builtin"
    assert pm.distributions["ddpm"] == ("gmbench", "0.1.0")


def test_new_plugin_refuses_a_name_that_is_taken(tmp_path):
    result = CliRunner().invoke(main, ["new-plugin", "ddpm", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "taken by the installed gmbench" in result.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_third_party_runs_carry_their_distribution_in_the_spec_hash():
    own = RunSpec("foo", "8gaussians", "smoke", 0)
    theirs = RunSpec("foo", "8gaussians", "smoke", 0, plugin="gmbench-foo 0.1.0")
    newer = RunSpec("foo", "8gaussians", "smoke", 0, plugin="gmbench-foo 0.2.0")
    assert len({own.spec_hash, theirs.spec_hash, newer.spec_hash}) == 3
    assert "plugin" not in own.key()  # gmbench's own runs keep the hashes they always had


def test_expand_stamps_third_party_methods_with_their_distribution():
    from gmbench.plugins import Registries
    from gmbench.runner import expand

    reg = Registries()
    if "example-gmm" not in reg.methods:
        pytest.skip("the example plugin is not installed (README's test command installs it)")
    specs = {s.method: s for s in expand(reg, "example-gmm,ddpm", "digits", "smoke", [0]).specs}
    assert specs["example-gmm"].plugin.startswith("gmbench-example-plugin ")
    assert specs["ddpm"].plugin == ""


def test_external_samples_are_their_own_board_entry():
    trained = {"method": "ddpm", "dataset": "digits", "budget": "small", "seed": 0}
    external = {**trained, "source": "external"}
    assert method_label(external) == "ddpm[external]"
    assert run_key(external) != run_key(trained)


def _third_party(dist_name, *classes, fail=None):
    """An installed third-party package's entry point whose hook registers ``classes`` (or raises)."""
    class Hooks:
        @hookimpl
        def gmbench_register_methods(self, register):
            if fail:
                raise fail
            for c in classes:
                register(c)

    return _EntryPoint(dist_name, _Dist(dist_name, "0.1.0"), Hooks())


def test_a_third_party_method_with_a_builtin_name_is_refused_while_the_rest_loads(monkeypatch):
    from gmbench.plugins import Registries
    from tests.plugins.fake_methods import GaussianFit

    class Impostor(GaussianFit):
        name = "ddpm"

    class Fine(GaussianFit):
        name = "collide-fine"

    installed = plugins.md.entry_points
    monkeypatch.setattr(plugins, "md", types.SimpleNamespace(entry_points=lambda group: [
        _third_party("gmbench-collide", Impostor, Fine),
        _third_party("gmbench-broken", fail=RuntimeError("boom in my hook")), *installed(group=group)]))
    with pytest.warns(UserWarning) as caught:
        reg = Registries()
        names = reg.methods.names()
    messages = [str(w.message) for w in caught]
    assert any("method 'ddpm' of gmbench-collide 0.1.0 is not loaded: the name is taken by gmbench" in m for m in messages)
    assert any("plugin gmbench-broken 0.1.0 failed to register its methods, none loaded: RuntimeError: boom in my hook"
               in m for m in messages)
    assert reg.methods.get("ddpm").__module__.startswith("gmbench_methods")  # the built-in, not the impostor
    assert "collide-fine" in names and reg.methods.origin("collide-fine") == "gmbench-collide 0.1.0"
    assert {"vae", "mdlm", "flow-matching"} <= set(names)  # the suite still loads
