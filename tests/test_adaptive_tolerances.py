"""The adaptive ODE samplers' records state the tolerances the run solved at, as ``--set``
gave them, not the class's defaults (score-sde ``ode-adaptive``, flow-matching and FFJORD
``dopri5``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gmbench.cli.run import _apply_settings, _parse_settings
from gmbench.data.toy2d import EightGaussians
from gmbench.evaluate import _timed_sampling
from gmbench.plugins import Registries
from gmbench.records import RunSpec

CASES = [  # method, --set keys, sampler, what the class states without tolerances
    ("score-sde", ("ode_rtol", "ode_atol"), "ode-adaptive", {"method": "dopri5"}),
    ("flow-matching", ("dopri5_rtol", "dopri5_atol"), "dopri5", {}),
    ("ffjord", ("rtol", "atol"), "dopri5", {}),
]


@pytest.fixture(scope="module")
def reg():
    return Registries()


def _built(reg, method: str, settings: list[str]):
    """The method as a run of ``gmbench run --set ...`` builds it (runner._execute)."""
    (spec,) = _apply_settings([RunSpec(method, "8gaussians", "smoke", 0)], _parse_settings(settings, {method}))
    return reg.methods.get(method)(EightGaussians().spec(), model_size="tiny", **dict(spec.hparams))


@pytest.mark.parametrize("method, keys, sampler, declared", CASES, ids=[c[0] for c in CASES])
def test_set_tolerances_reach_the_recorded_sampler_params(reg, method, keys, sampler, declared):
    rtol_key, atol_key = keys
    tuned = _built(reg, method, [f"{method}.{rtol_key}=1e-3", f"{method}.{atol_key}=2e-4"])
    default = _built(reg, method, [])
    g = torch.Generator().manual_seed(0)
    cost = _timed_sampling(tuned, sampler, tuned.sampler(sampler).default_nfe, 4, g, 1)
    assert cost["sampler_params"] == {**declared, "rtol": 1e-3, "atol": 2e-4}
    assert dict(default.sampler(sampler).params) == {**declared, "rtol": 1e-5, "atol": 1e-5}
    # the class keeps what it declares: one instance's tolerances never leak into another's
    assert [dict(s.params) for s in type(tuned).samplers if s.name == sampler] == [declared]
    others = [s for s in tuned.samplers if s.name != sampler]
    assert others == [s for s in type(tuned).samplers if s.name != sampler]


def test_a_score_sde_record_states_its_ode_tolerances(tmp_path):
    """End to end: ``--set score-sde.ode_rtol=1e-3`` in the spec, ``1e-3`` in the record."""
    from gmbench.budget import SMOKE
    from gmbench.hookspecs import hookimpl
    from gmbench.plugins import make_plugin_manager
    from gmbench.runner import run_one

    quick = dataclasses.replace(SMOKE, name="quick", train_flops={"toy2d": 5e8, "image": 1.0, "text": 1.0},
                                eval_samples={"toy2d": 64, "image": 8, "text": 8}, nfe_grid=(2,))

    class QuickBudget:
        @hookimpl
        def gmbench_register_budgets(self, register):
            register(quick)

    reg = Registries(make_plugin_manager(extra_plugins=(QuickBudget(),)))
    (spec,) = _apply_settings([RunSpec("score-sde", "8gaussians", "quick", 0)],
                              _parse_settings(["score-sde.ode_rtol=1e-3", "score-sde.ode_atol=1e-3",
                                               "score-sde.likelihood_steps=1"], {"score-sde"}))
    rec = run_one(spec, reg, tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    (adaptive,) = [c for c in rec["cost"]["sampling"] if c["sampler"] == "ode-adaptive"]
    assert adaptive["sampler_params"] == {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3}
