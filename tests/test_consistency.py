"""Tests for the `consistency` plugin (Song, Dhariwal, Chen & Sutskever, arXiv 2303.01469).

Closed forms checked, each written here from the paper rather than from the plugin's code:

* the parameterisation of Appendix C: ``c_skip``, ``c_out`` (and EDM's scalings for the
  teacher), and the boundary condition ``f(x, eps) = x`` holding exactly for any network;
* the Karras discretisation (``t_1 = eps``, ``t_N = T``, ``rho = 7``) and the schedules
  ``N(k)``, ``mu(k)`` of Eq. 3 / Appendix C at ``k = 0``, ``k = K`` and in between;
* a point mass at ``c``: its probability-flow trajectories are straight,
  ``x_t = c + t z``, so its consistency function is ``f*(x, t) = c + (x - c) eps / t`` and its
  denoiser is ``D*(x, t) = c``. With ``f*`` as both online and target model the CT loss is 0
  (any ``N``), and with ``D*`` as the teacher the Heun step is exact, so the CD loss is 0 too;
  a model off by a constant is not;
* Algorithm 1 with ``f*``: every multistep sample is ``c + eps z'`` with ``z' ~ N(0, I)``,
  because the noise added at ``tau`` is ``sqrt(tau^2 - eps^2)``;
* the target and evaluation EMA updates; the estimate of ``K`` against the steps the host takes.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.digits import Digits
from gmbench.data.toy2d import EightGaussians
from gmbench.method import MethodError
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.diffusion.consistency import ConsistencyModel, ct_ema, ct_steps, karras_times

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
IMAGE = DataSpec(name="img", modality="image", shape=(1, 8, 8), levels=17, value_range=(-1.0, 1.0))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_close(actual, expected, atol=1e-5, rtol=1.3e-6):
    """torch.testing.assert_close's check for float32 (its first call imports for seconds)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), (actual, expected)


class PointMassNet(nn.Module):
    """``F`` such that ``c_skip x + c_out F(c_in x, ln(t)/4)`` is the exact consistency function
    ``c + (x - c) eps / t`` of a point mass at ``c`` (or, with ``edm=True``, such that EDM's
    preconditioning gives the exact denoiser ``D = c``). Counts its calls."""

    def __init__(self, method: ConsistencyModel, c: torch.Tensor, edm: bool = False, shift: float = 0.0):
        super().__init__()
        self.sd, self.eps, self.c, self.edm, self.shift, self.calls = method.sigma_data, method.eps, c, edm, shift, 0
        self.out = nn.Linear(1, 1)  # the plugin zero-initialises net.out

    def forward(self, x_in, t_in):
        self.calls += 1
        t = torch.exp(4 * t_in.double()).reshape(-1, *([1] * (x_in.ndim - 1)))
        x = x_in.double() * (t**2 + self.sd**2).sqrt()  # undo c_in
        sd2 = self.sd**2
        if self.edm:
            c_skip, c_out, want = sd2 / (t**2 + sd2), t * self.sd / (t**2 + sd2).sqrt(), self.c.double()
        else:
            c_skip = sd2 / ((t - self.eps) ** 2 + sd2)
            c_out = self.sd * (t - self.eps) / (sd2 + t**2).sqrt()
            want = self.c.double() + (x - self.c.double()) * self.eps / t
        return ((want + self.shift - c_skip * x) / c_out).float()


# ------------------------------------------------------------------ parameterisation (Appendix C)


@pytest.mark.parametrize("spec", [TOY, IMAGE], ids=["toy2d", "image"])
@pytest.mark.parametrize("sigma_data", [None, 0.3])
def test_boundary_condition_holds_exactly_for_any_network(spec, sigma_data):
    torch.manual_seed(0)
    method = ConsistencyModel(spec, model_size="tiny", sigma_data=sigma_data)
    nn.init.normal_(method.net.out.weight, std=1.0)  # a network whose output is far from 0
    nn.init.normal_(method.net.out.bias, std=1.0)
    x = 3 * torch.randn(16, *spec.shape, generator=gen(1))
    out = method.consistency_fn(method.net, x, method.eps)
    assert torch.equal(out, x)
    # and not by accident: just above eps the network's output shows
    assert not torch.allclose(method.consistency_fn(method.net, x, method.eps * 1.5), x, atol=1e-5)


def test_scalings_match_appendix_c_closed_forms():
    method = ConsistencyModel(IMAGE, model_size="tiny")
    assert (method.sigma_data, method.eps, method.T) == (0.5, 0.002, 80.0)  # the paper's image constants
    toy = ConsistencyModel(TOY, model_size="tiny")
    assert (toy.sigma_data, toy.eps, toy.T) == (2.0, 0.008, 80.0)  # toy2d: sigma_data and eps times four
    t = torch.tensor([0.002, 0.01, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = method.scalings(t)
    for i, ti in enumerate(t.tolist()):
        assert math.isclose(float(c_skip[i]), 0.25 / ((ti - 0.002) ** 2 + 0.25), rel_tol=1e-12)
        assert math.isclose(float(c_out[i]), 0.5 * (ti - 0.002) / math.sqrt(0.25 + ti**2), rel_tol=1e-12, abs_tol=1e-15)
        assert math.isclose(float(c_in[i]), 1 / math.sqrt(ti**2 + 0.25), rel_tol=1e-12)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    # at t = sigma_data the skip and output weights are equal-ish; far out the skip vanishes
    assert float(c_skip[-1]) < 1e-4 and abs(float(c_out[-1]) - 0.5) < 1e-4
    e_skip, e_out, e_in = method.edm_scalings(t)
    for i, ti in enumerate(t.tolist()):
        assert math.isclose(float(e_skip[i]), 0.25 / (ti**2 + 0.25), rel_tol=1e-12)
        assert math.isclose(float(e_out[i]), ti * 0.5 / math.sqrt(ti**2 + 0.25), rel_tol=1e-12)
        assert math.isclose(float(e_in[i]), 1 / math.sqrt(ti**2 + 0.25), rel_tol=1e-12)


def test_network_sees_c_in_x_and_quarter_log_t():
    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(1, 1)

        def forward(self, x, t):
            self.seen = (x.clone(), t.clone())
            return torch.zeros_like(x)

    method = ConsistencyModel(TOY, model_size="tiny")
    spy = Spy()
    x, t = torch.randn(5, 2, generator=gen(2)), torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0])
    out = method.consistency_fn(spy, x, t)
    assert_close(spy.seen[0], x / (t[:, None] ** 2 + 4.0).sqrt())
    assert_close(spy.seen[1], 0.25 * t.log())
    assert_close(out, 4.0 / ((t[:, None] - 0.008) ** 2 + 4.0) * x)  # F = 0: f = c_skip x


# ------------------------------------------------------------------ discretisation and schedules


def test_karras_times_and_per_example_times_agree():
    t = karras_times(18, 0.002, 80.0, 7.0)
    assert float(t[0]) == 0.002 and float(t[-1]) == 80.0 and bool((t[1:] > t[:-1]).all())
    lo, hi = 0.002 ** (1 / 7), 80 ** (1 / 7)
    for i in (1, 9, 16):
        assert math.isclose(float(t[i]), (lo + i / 17 * (hi - lo)) ** 7, rel_tol=1e-12)
    method = ConsistencyModel(IMAGE, model_size="tiny")
    idx = torch.arange(18)
    assert_close(method.time_at(idx, 18), t.float())
    assert float(method.time_at(torch.tensor([0]), 18)) == float(torch.tensor(0.002))  # exact ends


def test_n_and_mu_schedules_at_the_ends_and_between():
    K, s0, s1, mu0 = 1000, 2, 150, 0.9
    assert ct_steps(0, K, s0, s1) == 2 and ct_steps(K, K, s0, s1) == 151
    assert ct_steps(2 * K, K, s0, s1) == 151  # k/K clipped at 1
    assert ct_ema(0, K, s0, s1, mu0) == pytest.approx(0.9, rel=1e-12)
    assert ct_ema(K, K, s0, s1, mu0) == pytest.approx(0.9 ** (2 / 151), rel=1e-12)
    # k = K/4: sqrt(0.25 * (151^2 - 4) + 4) = 75.52..., ceil(74.52...) + 1 = 76
    assert ct_steps(250, K, s0, s1) == 76
    assert ct_ema(250, K, s0, s1, mu0) == pytest.approx(math.exp(2 * math.log(0.9) / 76), rel=1e-12)
    ns = [ct_steps(k, K, s0, s1) for k in range(K + 1)]
    assert all(a <= b for a, b in zip(ns, ns[1:]))
    assert ct_ema(10, K, s0, s1, 0.0) == 0.0  # mu0 = 0: no target EMA


def test_auto_end_scale_and_method_schedule():
    method = ConsistencyModel(TOY, model_size="tiny", total_steps=400)
    assert method.end_scale(400) == 10 and method.end_scale(90_000) == 150 and method.end_scale(10**7) == 150
    assert method.end_scale(4) == 2  # never below s0
    assert method.schedule("consistency", 0) == (2, pytest.approx(0.9))
    assert method.schedule("consistency", 400)[0] == 11
    paper = ConsistencyModel(TOY, model_size="tiny", total_steps=400, s1=150)
    assert paper.schedule("consistency", 400) == (151, pytest.approx(0.9 ** (2 / 151)))
    cd = ConsistencyModel(TOY, model_size="tiny", mode="cd")
    assert cd.schedule("distill", 0) == cd.schedule("distill", 10**6) == (18, 0.95)


# ------------------------------------------------------------------ losses against a point mass


def point_mass_method(mode: str = "ct", spec: DataSpec = TOY, **kw):
    method = ConsistencyModel(spec, model_size="tiny", mode=mode, ema_decay=0, **kw)
    c = torch.full(spec.shape, 0.7)
    c.view(-1)[0] = -1.3
    method.net = PointMassNet(method, c)
    method.target = PointMassNet(method, c)
    if mode == "cd":
        method.teacher = PointMassNet(method, c, edm=True)
    return method, c


@pytest.mark.parametrize("spec", [TOY, IMAGE], ids=["toy2d", "image"])
@pytest.mark.parametrize("N", [2, 11, 151])
def test_ct_loss_of_the_exact_point_mass_model_is_zero(spec, N):
    method, c = point_mass_method("ct", spec)
    x = c.expand(256, *spec.shape).clone()
    torch.manual_seed(3)
    assert float(method.ct_loss(x, N)) < 1e-10
    method.net.shift = 0.1  # an online model off by 0.1 in every coordinate: loss 0.01
    torch.manual_seed(3)
    assert float(method.ct_loss(x, N)) == pytest.approx(0.01, rel=1e-3)


def test_cd_loss_of_the_exact_point_mass_model_and_teacher_is_zero():
    method, c = point_mass_method("cd")
    x = c.expand(256, 2).clone()
    torch.manual_seed(4)
    assert float(method.cd_loss(x)) < 1e-10
    assert method.teacher.calls == 2  # Heun: two teacher calls per step (batched over examples)
    method.teacher.c = c + 0.5  # a teacher whose data sits elsewhere moves the target
    torch.manual_seed(4)
    assert float(method.cd_loss(x)) > 1e-4


def test_heun_step_is_karras_heun_on_a_linear_denoiser():
    """D(x, t) = a x (a Gaussian-like teacher): one Heun step has a closed form."""
    method = ConsistencyModel(TOY, model_size="tiny", mode="cd")
    a = 0.3
    method.denoise = lambda net, x, t: a * x  # noqa: E731 - the ODE dx/dt = (1 - a) x / t
    x, t, s = torch.randn(4, 2, generator=gen(5)), torch.full((4,), 10.0), torch.full((4,), 6.0)
    h = -4.0
    d = (1 - a) * x / 10.0
    x_e = x + h * d
    expected = x + h / 2 * (d + (1 - a) * x_e / 6.0)
    assert_close(method.heun_step(x, t, s), expected)


def test_teacher_loss_is_edm_weighted_denoising_error():
    method, c = point_mass_method("cd")
    method.net = PointMassNet(method, c, edm=True)
    x = c.expand(128, 2).clone()
    assert float(method.teacher_loss(x)) < 1e-8  # the exact denoiser of a point mass
    method.net.shift = 0.2  # D off by 0.2: lambda(s) * 0.04 averaged over the sampled s
    torch.manual_seed(6)
    loss = float(method.teacher_loss(x))
    torch.manual_seed(6)
    sigma = (method.p_mean + method.p_std * torch.randn(128)).exp()
    weight = (sigma**2 + 4.0) / (sigma * 2.0) ** 2
    assert loss == pytest.approx(float((weight * 0.04).mean()), rel=1e-3)
    assert method.p_mean == pytest.approx(-1.2 + math.log(4.0))


# ------------------------------------------------------------------ EMA updates


def test_target_and_evaluation_ema_updates():
    method = ConsistencyModel(TOY, model_size="tiny", total_steps=100, ema_decay=0.9999)
    for step in (0, 50, 100):
        with torch.no_grad():
            method.net.out.weight.fill_(1.0)
            method.target.out.weight.fill_(0.0)
            method.ema.out.weight.fill_(0.0)
        method.on_step_end("consistency", step)
        mu = ct_ema(step, 100, 2, 5, 0.9)  # s1 = auto = round(sqrt(100)/2) = 5
        assert_close(method.target.out.weight, torch.full_like(method.target.out.weight, 1 - mu))
        decay = min(0.9999, (1 + step) / (10 + step))
        assert_close(method.ema.out.weight, torch.full_like(method.ema.out.weight, 1 - decay))
    cd = ConsistencyModel(TOY, model_size="tiny", mode="cd")
    with torch.no_grad():
        cd.net.out.weight.fill_(1.0)
    cd.on_step_end("teacher", 0)  # the teacher stage leaves the consistency target alone
    assert float(cd.target.out.weight.abs().max()) == 0.0
    cd.on_step_end("distill", 0)
    assert_close(cd.target.out.weight, torch.full_like(cd.target.out.weight, 0.05))


def test_distill_stage_starts_from_the_teacher_ema():
    method = ConsistencyModel(TOY, model_size="tiny", mode="cd")
    with torch.no_grad():
        method.net.out.weight.fill_(2.0)
        method.ema.out.weight.fill_(3.0)
    method.on_stage_start("distill", torch.zeros(4, 2), gen())
    for m in (method.teacher, method.net, method.target, method.ema):
        assert float(m.out.weight.detach().min()) == float(m.out.weight.detach().max()) == 3.0
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert all(p.requires_grad for p in method.net.parameters())


# ------------------------------------------------------------------ samplers (Algorithm 1)


def test_sample_times_are_the_karras_grid_from_T():
    method = ConsistencyModel(IMAGE, model_size="tiny")
    assert method.sample_times(1) == [80.0]
    (t0, t1) = method.sample_times(2)
    assert t0 == 80.0 and math.isclose(t1, ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7, rel_tol=1e-12)
    ts = method.sample_times(10)
    assert len(ts) == 10 and all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] > 0.002
    with pytest.raises(MethodError, match="nfe must be a positive integer"):
        method.sample_times(0)


@pytest.mark.parametrize("sampler,nfe,calls", [("onestep", 50, 1), ("twostep", 50, 2), ("multistep", 1, 1),
                                               ("multistep", 3, 3), ("multistep", 10, 10)])
def test_nfe_is_the_number_of_network_calls_and_multistep_keeps_the_law(sampler, nfe, calls):
    """With f* of a point mass every sample is c + eps z' (z' standard normal): a wrong noise
    level at tau (tau z instead of sqrt(tau^2 - eps^2) z) would inflate the variance. eps = 1
    and T = 10 make that inflation (1 + eps^2 / tau^2) visible."""
    method, c = point_mass_method("ct", sigma_min=1.0, sigma_max=10.0)
    method.ema = None
    x = method.sample(40_000, sampler, nfe, gen(7))
    assert method.net.calls == calls
    # the prior N(0, T^2) stands in for p_T = N(c, T^2): each evaluation at tau keeps a share
    # eps / tau of the offset -c, so the mean is c (1 - prod eps / tau_i); the variance is eps^2
    kept = math.prod(1.0 / tau for tau in method.sample_times(calls))
    assert_close(x.mean(0), c * (1 - kept), atol=0.02, rtol=0)  # std error 0.005
    var = x.var(0)
    assert bool(((var - 1.0).abs() < 0.04).all()), var  # std error of a variance here: 0.007


def test_cd_samples_only_at_its_training_times():
    """CD trains f at the N = cd_steps Karras times only, so its sampler's times are those of the
    evenly spaced indices round(i (N-1) / S) into that grid, never eps (where f is the identity):
    S = 2 is index 9 of 0..17 (2.59 on toy2d, not the off-grid midpoint 3.30), and from
    S = N - 1 on every training time but eps is used once, so the calls stop growing."""
    method = ConsistencyModel(TOY, model_size="tiny", mode="cd")
    grid = karras_times(18, method.eps, method.T, 7.0).flip(0).tolist()  # T first
    assert method.sample_times(1) == [80.0]
    assert method.sample_times(2) == [80.0, grid[9]] and math.isclose(grid[9], 2.591, rel_tol=1e-3)
    assert method.sample_times(3) == [80.0, grid[6], grid[11]]
    for nfe in (5, 10, 17, 50):
        times = method.sample_times(nfe)
        assert set(times) <= set(grid[:-1]) and times == sorted(times, reverse=True)
        assert len(times) == min(nfe, 17)
    cd, _ = point_mass_method("cd")
    cd.ema = None
    cd.sample(8, "multistep", 50, gen())
    assert cd.net.calls == 17
    ct = ConsistencyModel(TOY, model_size="tiny")  # CT keeps the Karras grid of S + 1 points
    assert ct.sample_times(2)[1] == pytest.approx(3.299, rel=1e-3) and len(ct.sample_times(50)) == 50


def test_tau1_sets_the_two_step_time_and_the_law_follows_it():
    """``tau1`` replaces the Karras midpoint at NFE 2 only, and the two-step sample is drawn at
    that time: with f* of a point mass the mean keeps the share eps/T * eps/tau1 of the offset
    (1/10 * 1/1.2 = 1/12 here; the midpoint, 3.48, would keep 1/35: a mean off by 0.038 and
    0.071 on the two coordinates, 7 and 14 standard errors), the variance stays eps^2."""
    method, c = point_mass_method("ct", sigma_min=1.0, sigma_max=10.0, tau1=1.2)
    method.ema = None
    default, _ = point_mass_method("ct", sigma_min=1.0, sigma_max=10.0)
    assert method.sample_times(2) == [10.0, 1.2] and default.sample_times(2)[1] > 3.0
    assert method.sample_times(3) == default.sample_times(3) and method.sample_times(1) == [10.0]
    for sampler, nfe in (("twostep", 1), ("multistep", 2)):
        method.net.calls = 0
        x = method.sample(40_000, sampler, nfe, gen(7))
        assert method.net.calls == 2
        assert_close(x.mean(0), c * (1 - 1 / 12), atol=0.02, rtol=0)  # std error 0.005
        assert bool(((x.var(0) - 1.0).abs() < 0.04).all())
    for bad in (1.0, 10.0, 0.5, 11.0, True, "1.4"):
        with pytest.raises(ValueError, match="tau1 must be a number between sigma_min and sigma_max"):
            ConsistencyModel(TOY, model_size="tiny", sigma_min=1.0, sigma_max=10.0, tau1=bad)


def test_sampling_is_deterministic_and_images_are_clipped():
    torch.manual_seed(0)
    method = ConsistencyModel(IMAGE, model_size="tiny")
    nn.init.normal_(method.ema.out.weight, std=1.0)  # a wild network
    for sampler, nfe in (("onestep", 1), ("twostep", 2), ("multistep", 4)):
        a, b, c = (method.sample(6, sampler, nfe, gen(s)) for s in (1, 1, 2))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.shape == (6, 1, 8, 8) and a.min() >= -1 and a.max() <= 1


def test_bad_input_fails_with_one_line_messages():
    method = ConsistencyModel(TOY, model_size="tiny")
    with pytest.raises(MethodError, match="Did you mean 'onestep'"):
        method.sample(4, "onestpe", 1, gen())
    for kw, match in (({"mode": "ict"}, "mode must be one of"), ({"distance": "lpips"}, "distance must be one of"),
                      ({"s1": 0}, "s1 must be an integer"), ({"s1": "big"}, "s1 must be an integer"),
                      ({"sigma_min": 5.0, "sigma_max": 1.0}, "need 0 < sigma_min"),
                      ({"teacher_share": 1.0}, "teacher_share"), ({"mu0": 1.0}, "mu0"),
                      ({"total_steps": 0}, "total_steps")):
        with pytest.raises(ValueError, match=match):
            ConsistencyModel(TOY, **kw)
    with pytest.raises(MethodError, match="does not support 'text'"):
        ConsistencyModel(DataSpec(name="x", modality="text", shape=(8,), vocab_size=4))


def test_pseudo_huber_distance():
    method = ConsistencyModel(IMAGE, model_size="tiny", distance="pseudo-huber")
    c = 0.00054 * 8  # sqrt(64) dims, image units
    a, b = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    b[1] = 0.1
    d = method.distance_fn(a, b)
    assert float(d[0]) == 0.0
    assert float(d[1]) == pytest.approx(math.sqrt(64 * 0.01 + c**2) - c, rel=1e-5)


def test_registered_with_its_claims():
    import gmbench_methods.diffusion.consistency as plugin
    from gmbench.plugins import Registries, make_plugin_manager

    # the plugin module's own hooks (the entry point is pyproject's; a stale gmbench.egg-info
    # on sys.path can hide entry points added after it was built)
    reg = Registries(make_plugin_manager(extra_plugins=(plugin,), load_entrypoints=False))
    assert reg.methods.get("consistency") is ConsistencyModel
    info = ConsistencyModel.describe()
    assert info["paper"] == "2303.01469" and info["likelihood"] == "none"
    assert {s["name"] for s in info["samplers"]} == {"onestep", "twostep", "multistep"}
    claims = {name: reg.claims.get(name) for name in reg.claims.names() if name.startswith("cm-")}
    assert set(claims) == {f"cm-{m}-two-step-beats-one-step-{d}" for m in ("ct", "cd")
                           for d in ("8gaussians-swd", "digits-fid")} | {"cm-cd-beats-ct-one-step-8gaussians-swd",
                                                                        "cm-cd-beats-ct-one-step-digits-fid"}
    two = claims["cm-ct-two-step-beats-one-step-digits-fid"]
    assert (two.a.method, two.a.sampler, two.a.nfe) == ("consistency", "twostep", 2)
    assert (two.b.method, two.b.sampler, two.b.nfe) == ("consistency", "onestep", 1)
    assert claims["cm-cd-beats-ct-one-step-digits-fid"].a.method == "consistency[mode=cd]"


# ------------------------------------------------------------------ K from the budget


@pytest.mark.parametrize("dataset", ["8gaussians", "digits"])
def test_step_estimate_matches_the_steps_the_host_takes(dataset):
    """K (from one counted forward and backward plus ADAM_EMA_OPS_PER_PARAM per parameter) is
    within one step of what the host's meter lets the stage take, and the estimated cost of a
    step within 1% of the cost the host charged."""
    ds = EightGaussians() if dataset == "8gaussians" else Digits()
    modality = ds.spec().modality
    budget = dataclasses.replace(SMOKE, batch_size={modality: 4 if modality == "image" else 64})
    probe = ConsistencyModel(ds.spec(), model_size="tiny")
    probe.budget_view = budget.view(modality, {"consistency": 1e18})
    probe.estimate_steps("consistency", ds.split("train").x)
    per_step = probe.step_estimate["flops_per_step"]
    budget = dataclasses.replace(budget, train_flops={modality: 6.5 * per_step})  # ~6 steps
    torch.manual_seed(0)
    method = ConsistencyModel(ds.spec(), model_size="tiny")
    (report,) = train(method, ds.split("train").x, budget, modality, gen(0))
    K = method.schedule_steps["consistency"]
    assert abs(K - report.steps) <= 1, (K, report.steps, method.step_estimate)
    assert report.notes == method.step_estimate and report.notes["steps"] == K  # kept in the record
    charged = (report.flops - report.prepare_flops) / report.steps
    assert abs(charged / method.step_estimate["flops_per_step"] - 1) < 0.01, (charged, method.step_estimate)


# ------------------------------------------------------------------ it learns (smoke budget)


def test_learns_8gaussians_at_half_the_smoke_budget():
    """Half of smoke (~140 steps; measured at seed 0: one-step 1.20, two-step 0.69, ten steps
    0.31 against the data's Gaussian 0.83 and the untrained model's 2.86)."""
    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x[:2000]
    budget = dataclasses.replace(SMOKE, train_flops={"toy2d": SMOKE.flops_for("toy2d") / 2})
    torch.manual_seed(0)
    method = ConsistencyModel(ds.spec(), model_size=budget.model_size)
    (report,) = train(method, train_x, budget, "toy2d", gen(0))
    assert report.flops <= budget.flops_for("toy2d") and report.steps > 100
    fit = torch.distributions.MultivariateNormal(train_x.mean(0), torch.cov(train_x.T))
    baseline = sliced_wasserstein(fit.sample((2000,)), test_x)  # the data's Gaussian
    fresh = ConsistencyModel(ds.spec(), model_size="tiny")
    untrained = sliced_wasserstein(fresh.sample(2000, "onestep", 1, gen(1)), test_x)
    one = sliced_wasserstein(method.sample(2000, "onestep", 1, gen(1)), test_x)
    two = sliced_wasserstein(method.sample(2000, "twostep", 2, gen(1)), test_x)
    ten = sliced_wasserstein(method.sample(2000, "multistep", 10, gen(1)), test_x)
    assert one < 0.6 * untrained, (one, untrained)  # untrained f(x, T) ~ 0: the data's mean
    assert two < 0.8 * one and ten < 0.8 * baseline, (one, two, ten, baseline)


# ------------------------------------------------------------------ the conformance kit


class TestConsistencyConformance(MethodConformance):
    method = ConsistencyModel
    load_entrypoints = False


class TestConsistencyDistillationConformance(MethodConformance):
    method = ConsistencyModel
    load_entrypoints = False
    hparams = {"mode": "cd"}


class TestConsistencyConformanceImages(MethodConformance):
    method = ConsistencyModel
    load_entrypoints = False
    dataset = "digits"
    batch_size = 8
