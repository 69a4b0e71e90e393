"""Tests for the `glow` plugin (Kingma & Dhariwal, arXiv 1807.03039).

Checked: the multi-scale architecture with split priors on 8x8 digits; actnorm's
data-dependent initialisation in ``on_stage_start`` (every actnorm's output on the
initialisation batch has zero mean and unit variance per channel, it is metered by the
host and done once); temperature as a sampler parameter (``sample-t0.7`` draws the same
latents scaled by 0.7, one inverse pass, NFE 1); the split prior's sampling equals the
released code's ``mu + exp(logs) T eps``; learning on a reduced smoke budget on 8gaussians
and through the host on digits; conformance on toy2d and digits. The layers themselves:
tests/test_flow_layers.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import tomllib
from pathlib import Path

import pytest
import torch

from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.digits import Digits
from gmbench.data.toy2d import EightGaussians
from gmbench.evaluate import counted_nfe
from gmbench.method import MethodError
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.flows import glow as glow_module
from gmbench_methods.flows import layers as L
from gmbench_methods.flows.glow import Glow

ROOT = Path(__file__).resolve().parents[1]
TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
DIGITS = Digits().spec()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ contract


def test_contract_and_registration():
    assert (Glow.name, Glow.family, Glow.paper, Glow.likelihood) == ("glow", "flows", "1807.03039", "exact")
    assert [(s.name, s.adjustable_nfe, s.default_nfe, dict(s.params)) for s in Glow.samplers] == [
        ("sample", False, 1, {"temperature": 1.0}), ("sample-t0.7", False, 1, {"temperature": 0.7})]
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["gmbench"]
    assert eps["glow"] == "gmbench_methods.flows.glow" and importlib.import_module(eps["glow"]) is glow_module
    registered = []
    glow_module.gmbench_register_methods(registered.append)
    assert registered == [Glow]
    claims = []
    glow_module.gmbench_register_claims(claims.append)
    assert {(c.a.method, c.b.method, c.metric) for c in claims} == {
        ("glow", "realnvp", "test_nll"), ("glow", "realnvp", "test_bpd"),
        ("glow", "glow[coupling=additive]", "test_nll"), ("glow", "glow[coupling=additive]", "test_bpd"),
        ("glow", "floor[reference]", "test_nll")}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"coupling": "spline"}, "coupling must be one of"),
        ({"coupling_scale": "softplus"}, "coupling_scale must be one of"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"grad_clip": 0.0}, "grad_clip must be > 0 or None"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(MethodError, match=match) as err:
        Glow(TOY, model_size="tiny", **kwargs)
    assert "\n" not in str(err.value)


def test_bad_levels_raise():
    with pytest.raises(MethodError, match="divisible by 16"):
        Glow(DIGITS, model_size="tiny", levels=4)


# ------------------------------------------------------------------ architecture


def test_multiscale_architecture_with_split_prior_on_digits():
    model = Glow(DIGITS, model_size="tiny")
    flow = model.flow
    assert (model.steps, model.levels) == (4, 2)
    assert len(flow.levels) == 2 and all(len(level) == 4 for level in flow.levels)
    assert [step.actnorm.bias.shape[0] for level in flow.levels for step in level] == [4] * 4 + [8] * 4
    assert len(flow.splits) == 1 and isinstance(flow.splits[0], L.SplitPrior)
    assert flow.factored == [(2, 4, 4)] and flow.top_shape == (8, 2, 2)
    assert isinstance(flow.pre, L.CentreScale)
    assert model.backbone().startswith("ConvNet(tiny, ") and "8 nets" in model.backbone()
    toy = Glow(TOY, model_size="tiny")
    assert len(toy.flow.levels) == 1 and len(toy.flow.levels[0]) == 4 and not toy.flow.splits
    assert "MLP(tiny, " in toy.backbone()


def test_split_prior_sampling_is_mu_plus_exp_logs_times_temperature():
    torch.manual_seed(0)
    split = L.SplitPrior(4).double()
    with torch.no_grad():
        split.conv.weight.normal_(0, 0.3)
        split.conv.bias.normal_(0, 0.3)
    z1 = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=gen(1))
    e = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=gen(2))
    mean, logs = split.conv(z1).chunk(2, dim=1)
    h = split.inverse(z1, 0.7 * e)
    torch.testing.assert_close(h[:, 2:], mean + logs.exp() * 0.7 * e)
    assert torch.equal(h[:, :2], z1)


# ------------------------------------------------------------------ data-dependent init


@pytest.mark.parametrize("spec", [TOY, DIGITS], ids=["toy2d", "digits"])
def test_actnorm_data_dependent_init_in_on_stage_start(spec):
    torch.manual_seed(0)
    model = Glow(spec, model_size="tiny", init_examples=128, hidden=8)
    data = EightGaussians() if spec is TOY else Digits()
    actnorms = [m for m in model.flow.modules() if isinstance(m, L.ActNorm)]
    assert actnorms and not any(int(m.initialized) for m in actnorms)
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, args, out: outputs.__setitem__(mod, out)) for m in actnorms]
    model.train(True)
    assert model.on_stage_start("train", data.split("train").x, gen(1)) is None
    for h in hooks:
        h.remove()
    assert all(int(m.initialized) for m in actnorms)
    assert len(outputs) == len(actnorms)  # the flow's and those inside the coupling networks
    for m, out in outputs.items():
        y = out[0] if isinstance(out, tuple) else out
        dims = [0] + list(range(2, y.dim()))
        assert y.shape[0] == 128
        torch.testing.assert_close(y.mean(dims), torch.zeros(y.shape[1]), rtol=0, atol=1e-4)
        torch.testing.assert_close(y.std(dims, unbiased=False), torch.ones(y.shape[1]), rtol=0, atol=1e-3)
    # done once: a second stage start changes nothing
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.on_stage_start("train", data.split("train").x, gen(2))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_data_init_is_metered_as_stage_preparation():
    data = EightGaussians()
    tiny = dataclasses.replace(SMOKE, name="glow-tiny", train_flops={**SMOKE.train_flops, "toy2d": 5e9})
    torch.manual_seed(0)
    model = Glow(data.spec(), model_size="tiny", steps=2)
    (report,) = train(model, data.split("train").x, tiny, "toy2d", gen(0))
    assert report.prepare_flops > 0 and report.flops <= tiny.flops_for("toy2d")
    assert all(int(m.initialized) for m in model.flow.modules() if isinstance(m, L.ActNorm))


# ------------------------------------------------------------------ temperature and NFE


def test_temperature_is_a_sampler_parameter_and_nfe_is_one():
    torch.manual_seed(0)
    model = Glow(DIGITS, model_size="tiny", hidden=8)
    model.train(False)
    a = model.sample(6, "sample-t0.7", 1, gen(5))
    eps = 0.7 * torch.randn(6, 64, generator=gen(5))
    with torch.no_grad():
        b = model.flow(eps, reverse=True).clamp(-1, 1)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, model.sample(6, "sample", 1, gen(5)))
    for sampler in ("sample", "sample-t0.7"):
        assert counted_nfe(model, sampler, 1, gen(6)) == 1


# ------------------------------------------------------------------ learning

QUICK = dataclasses.replace(SMOKE, name="glow-quick", train_flops={**SMOKE.train_flops, "toy2d": 3.5e10})


def test_learns_8gaussians_on_a_smoke_budget():
    data = EightGaussians()
    torch.manual_seed(0)
    model = Glow(data.spec(), model_size=QUICK.model_size)
    model.train(False)
    untrained = HeldOutLikelihood().score_model(model, EvalContext(dataset=data, n_samples=0, seed=0))["test_nll"]
    (report,) = train(model, data.split("train").x, QUICK, "toy2d", gen(0))
    assert report.steps > 30 and report.flops <= QUICK.flops_for("toy2d")
    trained = HeldOutLikelihood().score_model(model, EvalContext(dataset=data, n_samples=0, seed=0))["test_nll"]
    # a Gaussian fitted to the data: about 4.95 nats; the true density: 3.48 on these points
    assert trained < untrained - 2.0, (trained, untrained)
    assert trained < 4.6, trained
    # lower temperature concentrates the samples (Glow Sec. 5)
    cold, warm = model.sample(2000, "sample-t0.7", 1, gen(3)), model.sample(2000, "sample", 1, gen(3))
    assert data.log_prob(cold).mean() > data.log_prob(warm).mean()


# a fifteenth of smoke's image FLOPs (75 steps: 3.08 bits/dim, seed 0), to keep this file
# fast on a CPU; the full smoke budget's run through the host is in docs/methods/glow.md
DIGITS_QUICK = dataclasses.replace(SMOKE, name="glow-digits-quick", train_flops={**SMOKE.train_flops, "image": 2e10})


def per_pixel_gaussian_bpd(data) -> float:
    """Test bits/dim of independent per-pixel Gaussians fitted to the dequantised train split,
    scored like :class:`HeldOutLikelihood` (3.36 bits/dim; tests/test_vae.py has the same)."""
    delta = 2 / 16
    g = gen(11)
    train_x = L.dequantise(data.split("train").x.flatten(1).double(), delta, g)
    test_x = L.dequantise(data.split("test").x.flatten(1).double(), delta, g)
    ll = torch.distributions.Normal(train_x.mean(0), train_x.std(0)).log_prob(test_x).sum(1)
    return float(((-ll - 64 * math.log(delta)) / (64 * math.log(2))).mean())


def test_learns_digits_on_a_reduced_smoke_budget():
    data = Digits()
    torch.manual_seed(0)
    model = Glow(data.spec(), model_size=DIGITS_QUICK.model_size)
    (report,) = train(model, data.split("train").x, DIGITS_QUICK, "image", gen(0))
    assert report.steps > 50 and report.flops <= DIGITS_QUICK.flops_for("image")
    bpd = HeldOutLikelihood().score_model(model, EvalContext(dataset=data, n_samples=0, seed=0))["test_bpd"]
    baseline = per_pixel_gaussian_bpd(data)
    assert 3.0 < baseline < 3.7
    assert bpd < baseline - 0.2, (bpd, baseline)
    for sampler in ("sample", "sample-t0.7"):
        x = model.sample(16, sampler, 1, gen(2))
        assert x.shape == (16, 1, 8, 8) and x.min() >= -1 and x.max() <= 1


# ------------------------------------------------------------------ conformance kit


class TestGlowConformanceToy(MethodConformance):
    method = Glow
    dataset = "8gaussians"


class TestGlowConformanceDigits(MethodConformance):
    method = Glow
    dataset = "digits"
