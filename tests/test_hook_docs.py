"""docs/hooks.md stays in step with gmbench/hookspecs.py (datasette's test_plugin_hooks_are_documented)."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

from gmbench import hookspecs
from gmbench.plugins import PluginManager, Registries, make_plugin_manager
from gmbench.records import RunSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def hook_specs() -> dict[str, object]:
    pm = PluginManager()
    return {name: fn for name, fn in vars(hookspecs).items()
            if callable(fn) and pm.parse_hookspec_opts(hookspecs, name) is not None}


def signature_of(name: str, fn) -> str:
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def doc_sections() -> dict[str, str]:
    """Hook heading -> the text up to the next level-2 heading."""
    parts = re.split(r"^## ", DOC.read_text(), flags=re.M)
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts[1:] if p.startswith("gmbench_")}


def test_every_hook_is_documented_and_every_documented_hook_exists():
    assert set(doc_sections()) == set(hook_specs())


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_documented_signature_matches_hookspec(name):
    blocks = FENCE.findall(doc_sections()[name])
    assert blocks and blocks[0][0] == "text", f"{name}: the section must open with its signature in a ```text block"
    assert blocks[0][1].strip() == signature_of(name, hook_specs()[name])
    opts = PluginManager().parse_hookspec_opts(hookspecs, name)
    if opts.get("firstresult"):
        assert "first non-None" in doc_sections()[name], f"{name} is firstresult: say so"


def example_plugin(name: str) -> types.ModuleType:
    code = [body for lang, body in FENCE.findall(doc_sections()[name]) if lang == "python"]
    assert len(code) == 1, f"{name}: give exactly one ```python example"
    module = types.ModuleType(f"hook_doc_example_{name}")
    exec(compile(code[0], f"docs/hooks.md:{name}", "exec"), module.__dict__)
    assert callable(getattr(module, name, None)), f"the example of {name} does not implement it"
    return module


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_example_is_a_valid_plugin(name):
    # pluggy checks the implementation's argument names against the spec at registration
    make_plugin_manager(extra_plugins=(example_plugin(name),), load_entrypoints=False)


@pytest.mark.parametrize("name, registry, registered", [
    ("gmbench_register_datasets", "datasets", "blob"),
    ("gmbench_register_metrics", "metrics", "mean_gap"),
    ("gmbench_register_budgets", "budgets", "laptop"),
])
def test_registration_example_registers(name, registry, registered):
    reg = Registries(make_plugin_manager(extra_plugins=(example_plugin(name),), load_entrypoints=False))
    assert registered in getattr(reg, registry)


def test_dataset_and_metric_examples_work_together():
    pm = make_plugin_manager(
        extra_plugins=(example_plugin("gmbench_register_datasets"), example_plugin("gmbench_register_metrics")),
        load_entrypoints=False,
    )
    reg = Registries(pm)
    from gmbench.metrics.base import EvalContext

    blob = reg.datasets.get("blob")()
    ctx = EvalContext(dataset=blob, n_samples=100, seed=0)
    out = reg.metrics.get("mean_gap").compute(ctx, samples=blob.split("train").x[:1000])
    assert 0 <= out["mean_gap"] < 0.2  # two samples of one distribution: close means


def test_observer_examples_run(capsys):
    pm = make_plugin_manager(
        extra_plugins=(example_plugin("gmbench_run_start"), example_plugin("gmbench_run_finish")),
        load_entrypoints=False,
    )
    spec = RunSpec("vae", "8gaussians", "smoke", 3)
    pm.hook.gmbench_run_start(spec=spec)
    pm.hook.gmbench_run_finish(spec=spec, record={"status": "failed", "error": "boom"})
    out = capsys.readouterr().out
    assert "starting vae on 8gaussians, budget smoke, seed 3" in out
    assert "vae on 8gaussians: failed: boom" in out
