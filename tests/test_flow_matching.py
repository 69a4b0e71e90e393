"""Tests for the `flow-matching` plugin (Lipman et al., arXiv 2210.02747; minibatch OT coupling,
arXiv 2302.00482) and the ODE helpers it shares with `rectified-flow`.

Closed forms checked, each derived here independently of the plugin's code:

* the OT path (Eqs. 20-23) and the VP path (Eqs. 18-19) against their formulas, and each
  target against the time derivative of its conditional flow ``psi_t(x_0)`` (finite
  differences): the defining property of the conditional vector field (Theorem 3);
* for a known linear field ``v(x, t) = A x`` the flow maps ``N(0, I)`` to ``N(0, M M^T)`` with
  ``M = expm(A)``: the ODE likelihood (exact trace) equals that Gaussian's log-density, and
  Hutchinson's estimate is unbiased for it; Euler and midpoint give the exact powers of their
  one-step matrices, dopri5 gives ``expm(A)``;
* for a time-dependent field ``v(x, t) = a(t) A x`` (plus ``t B x`` with ``A B != B A``) Euler and
  midpoint give their exact discrete products in the sampler's direction (noise at ``t = 0``),
  and the likelihood equals ``log N(Phi^{-1} x) - int_0^1 div v dt``: running the field in
  reversed time fails these;
* the minibatch OT pairing against brute force over all permutations.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from torch import nn

from gmbench.budget import SMALL, SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.toy2d import EightGaussians
from gmbench.method import MethodError
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.flow_matching import ode
from gmbench_methods.flow_matching.flow_matching import FlowMatching
from tests.interrupting import JumpingClock, stopping_at

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
IMAGE = DataSpec(name="img", modality="image", shape=(1, 3, 3), levels=256, value_range=(-1.0, 1.0))
A2 = np.array([[-0.3, 0.8], [-0.5, 0.2]])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LinearField(nn.Module):
    """v(x, t) = A x on the flattened input; counts its calls."""

    def __init__(self, A: np.ndarray):
        super().__init__()
        self.A, self.calls = torch.tensor(A, dtype=torch.float32), 0

    def forward(self, x, t):
        self.calls += 1
        return (x.flatten(1) @ self.A.T).reshape(x.shape)


def with_field(data: DataSpec, A: np.ndarray, **kw) -> tuple[FlowMatching, LinearField]:
    method = FlowMatching(data, model_size="tiny", **kw)
    method.net = LinearField(A)
    return method, method.net


def gaussian_logp(x: torch.Tensor, cov: np.ndarray) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(torch.zeros(len(cov), dtype=torch.float64),
                                                  torch.tensor(cov)).log_prob(x.double().flatten(1))


# ------------------------------------------------------------------ conditional paths


def test_ot_path_and_target_are_eqs_22_23():
    m = FlowMatching(TOY, model_size="tiny", sigma_min=0.01)
    x0, x1 = torch.randn(2, 64, 2, generator=gen(1))
    t = torch.rand(64, generator=gen(2))
    xt, ut = m.conditional_path(x0, x1, t)
    tb = t[:, None]
    torch.testing.assert_close(xt, (1 - 0.99 * tb) * x0 + tb * x1)
    torch.testing.assert_close(ut, x1 - 0.99 * x0)
    # the ends: noise at t = 0, data blurred by sigma_min at t = 1
    torch.testing.assert_close(m.conditional_path(x0, x1, torch.zeros(64))[0], x0)
    torch.testing.assert_close(m.conditional_path(x0, x1, torch.ones(64))[0], x1 + 0.01 * x0)


def vp_reference(t: float) -> tuple[float, float]:
    """(mu coefficient alpha_{1-t}, sigma_t) of FM Eq. 18, from beta(s) = 0.1 + 19.9 s."""
    s = 1 - t
    T = 0.1 * s + 0.5 * 19.9 * s**2
    alpha = math.exp(-0.5 * T)
    return alpha, math.sqrt(1 - alpha**2)


@pytest.mark.parametrize("path", ["ot", "vp"])
def test_target_is_the_time_derivative_of_the_conditional_flow(path):
    """u_t(psi_t(x_0) | x_1) = d/dt psi_t(x_0) (FM Theorem 3), by central differences in float64."""
    m = FlowMatching(TOY, model_size="tiny", path=path)
    x0, x1 = torch.randn(2, 32, 2, generator=gen(3), dtype=torch.float64)
    for t in (0.0 + 1e-3, 0.3, 0.7, 0.99):
        h = 1e-6
        tt = torch.full((32,), t, dtype=torch.float64)
        _, ut = m.conditional_path(x0, x1, tt)
        fwd = m.conditional_path(x0, x1, tt + h)[0]
        bwd = m.conditional_path(x0, x1, tt - h)[0]
        torch.testing.assert_close(ut, (fwd - bwd) / (2 * h), rtol=1e-5, atol=1e-5)
        if path == "vp":  # and the path itself is Eq. 18
            alpha, sigma = vp_reference(t)
            torch.testing.assert_close(m.conditional_path(x0, x1, tt)[0], alpha * x1 + sigma * x0)


def test_vp_path_starts_near_the_prior():
    alpha, sigma = vp_reference(0.0)
    assert alpha < 0.01 and abs(sigma - 1) < 1e-4
    m = FlowMatching(TOY, model_size="tiny", path="vp")
    assert m.t_end == 1 - 1e-5 and FlowMatching(TOY, model_size="tiny").t_end == 1.0


def test_training_loss_is_the_cfm_regression():
    """With v = 0 the loss is E||u_t||^2 / D; for the OT path that is (1 + (1-sigma_min)^2) for unit data."""
    m = FlowMatching(TOY, model_size="tiny")  # output layer zeroed: v = 0 at start
    torch.manual_seed(0)
    batch = torch.randn(20000, 2)
    loss = float(m.training_step("flow", batch, 0)["adam"].detach())
    assert abs(loss - (1 + (1 - 1e-4) ** 2)) < 0.05, loss


# ------------------------------------------------------------------ samplers on a linear field


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_and_midpoint_are_their_exact_discrete_maps(steps):
    method, net = with_field(TOY, A2)
    z = torch.randn(8, 2, generator=gen(5))
    h, A = 1.0 / steps, A2
    euler = np.linalg.matrix_power(np.eye(2) + h * A, steps)
    midpoint = np.linalg.matrix_power(np.eye(2) + h * A + 0.5 * h**2 * A @ A, steps)
    for sampler, M, calls in (("euler", euler, steps), ("midpoint", midpoint, 2 * steps)):
        net.calls = 0
        x = method.sample(8, sampler, steps, gen(5))
        assert net.calls == calls
        torch.testing.assert_close(x.double(), z.double() @ torch.tensor(M).T, rtol=1e-5, atol=1e-5)


def test_dopri5_reaches_the_exact_flow_map():
    method, net = with_field(TOY, A2)
    x = method.sample(8, "dopri5", 1, gen(6))
    z = torch.randn(8, 2, generator=gen(6))
    torch.testing.assert_close(x.double(), z.double() @ torch.tensor(expm(A2)).T, rtol=1e-4, atol=1e-4)
    assert 6 <= net.calls < 200  # adaptive: what it used (the host records the count)
    info = method.sampler("dopri5")
    assert info.adaptive and not info.adjustable_nfe and method.sampler("midpoint").calls_per_step == 2
    # its declared NFE only schedules it after every fixed-step setting (cheapest first)
    from gmbench.evaluate import sampler_grid

    for budget in (SMOKE, SMALL):
        assert sampler_grid(method, budget)[-1] == ("dopri5", 100)
    # the likelihood ODE defaults to dopri5 at 1e-4 on both modalities (fixed RK4 steps did not converge)
    for spec in (TOY, IMAGE):
        m = FlowMatching(spec)
        assert (m.likelihood_steps, m.likelihood_rtol, m.likelihood_atol) == ("adaptive", 1e-4, 1e-4)


def test_images_are_clamped_and_sampling_is_seeded():
    torch.manual_seed(0)
    method = FlowMatching(IMAGE, model_size="tiny")
    nn.init.normal_(method.net.out.weight, std=5.0)  # a wild untrained network
    for sampler in ("euler", "midpoint"):
        a, b, c = (method.sample(4, sampler, 3, gen(s)) for s in (1, 1, 2))
        assert a.shape == (4, 1, 3, 3) and a.min() >= -1 and a.max() <= 1
        assert bool((a.abs() == 1).any())  # some values were clamped
        # interior values tell the seeds apart (clamped ones may coincide)
        assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------ likelihood


def test_exact_trace_likelihood_of_a_linear_flow_is_the_gaussian_closed_form():
    method, _ = with_field(TOY, A2)
    assert method.likelihood == "exact"
    M = expm(A2)
    x = torch.tensor(M) @ torch.randn(2, 300, generator=gen(7), dtype=torch.float64)
    ll = method.log_likelihood(x.T.float(), gen(8))
    torch.testing.assert_close(ll.double(), gaussian_logp(x.T, M @ M.T), rtol=1e-4, atol=1e-4)


def test_vp_likelihood_ends_where_its_ode_ends():
    """The VP path integrates on [0, 1 - vp_eps]: the flow map is expm((1 - eps) A)."""
    method, _ = with_field(TOY, A2, path="vp", vp_eps=0.2)
    M = expm(0.8 * A2)
    x = torch.randn(50, 2, generator=gen(9), dtype=torch.float64)
    ll = method.log_likelihood(x.float(), gen(10))
    torch.testing.assert_close(ll.double(), gaussian_logp(x, M @ M.T), rtol=1e-4, atol=1e-4)


def test_hutchinson_is_unbiased_on_a_linear_map():
    J = torch.tensor([[1.0, 2.0, -1.0], [0.5, -3.0, 4.0], [2.0, 1.0, 0.25]], dtype=torch.float64)
    z = torch.zeros(200_000, 3, dtype=torch.float64, requires_grad=True)
    v = z @ J.T
    eps = ode.rademacher(z.shape, gen(11), z.device).double()
    est = ode.hutchinson_divergence(v, z, eps)
    assert float(est.std()) > 1  # a genuinely random estimate ...
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - float(J.trace())) < 4 * se  # ... whose mean is the trace
    z5 = torch.randn(5, 3, generator=gen(16), dtype=torch.float64, requires_grad=True)
    exact = ode.exact_divergence(z5 @ J.T, z5)
    torch.testing.assert_close(exact, torch.full((5,), float(J.trace()), dtype=torch.float64))


@pytest.mark.parametrize("steps", [20, "adaptive"])
def test_image_likelihood_is_a_labelled_unbiased_estimate(steps):
    """A Jacobian that is not a multiple of I, so Hutchinson's draws vary and their mean must be
    the exact value: with dopri5 too (one noise vector per example, held along the path)."""
    rng = np.random.default_rng(12)
    A = 0.3 * rng.standard_normal((9, 9))
    method, _ = with_field(IMAGE, A, likelihood_steps=steps, likelihood_rtol=1e-6, likelihood_atol=1e-6)
    assert method.likelihood == "estimate" and FlowMatching.likelihood == "exact"
    M = expm(A)
    x = (torch.tensor(M) @ torch.randn(9, 1, generator=gen(13), dtype=torch.float64)).T
    exact = float(gaussian_logp(x, M @ M.T))
    draws = method.log_likelihood(x.float().reshape(1, 1, 3, 3).expand(4000, 1, 3, 3).contiguous(), gen(14)).double()
    assert float(draws.std()) > 0.05
    assert abs(float(draws.mean()) - exact) < 4 * float(draws.std()) / math.sqrt(len(draws)) + 1e-3


# ------------------------------------------------------------------ a time-dependent linear field
# Every field above ignores t, so a sampler or likelihood that ran the field in reversed time
# would pass them all. With v(x, t) = a(t) A x, a(t) = 1 + 2t (A from above), the fixed-step
# samplers' maps are exact products of per-step matrices that depend on the times at which the
# field is evaluated. The exact flow map, expm(A int_0^1 a) = expm(2 A), is the same for
# a(1 - t), so a field evaluated at 1 - t would still give the right likelihood: for that check
# a term t B x with A B != B A is added, which makes the (time-ordered) flow map depend on
# the direction of time.

B2 = np.array([[0.6, -0.4], [1.0, -0.2]])  # A2 B2 != B2 A2


def a_of(t):
    return 1 + 2 * t  # int_0^1 a(t) dt = 2


class TimeLinearField(nn.Module):
    """v(x, t) = a(t) A x + t B x on the flattened input (t a float or a 0-d tensor); counts its calls."""

    def __init__(self, A: np.ndarray, B: np.ndarray | None = None):
        super().__init__()
        self.A = torch.tensor(A, dtype=torch.float32)
        self.B = torch.zeros_like(self.A) if B is None else torch.tensor(B, dtype=torch.float32)
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        t = torch.as_tensor(t, dtype=x.dtype)
        return (x.flatten(1) @ (a_of(t) * self.A + t * self.B).T).reshape(x.shape)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_samplers_run_a_time_dependent_field_forward_from_noise_at_t0(steps):
    """Noise at t = 0, data at t = 1: Euler is prod_k (I + h a(t_k) A) over t_k = k h, midpoint
    prod_k (I + h a(t_k + h/2) A + h^2/2 a(t_k + h/2) a(t_k) A^2) (all factors commute)."""
    method = FlowMatching(TOY, model_size="tiny")
    method.net = net = TimeLinearField(A2)
    z = torch.randn(8, 2, generator=gen(21))
    h, I2 = 1.0 / steps, np.eye(2)
    euler, midpoint = I2, I2
    for k in range(steps):
        t = k * h
        euler = (I2 + h * a_of(t) * A2) @ euler
        midpoint = (I2 + h * a_of(t + h / 2) * A2 + 0.5 * h**2 * a_of(t + h / 2) * a_of(t) * A2 @ A2) @ midpoint
    for sampler, M, calls in (("euler", euler, steps), ("midpoint", midpoint, 2 * steps)):
        net.calls = 0
        x = method.sample(8, sampler, steps, gen(21))
        assert net.calls == calls
        torch.testing.assert_close(x.double(), z.double() @ torch.tensor(M).T, rtol=1e-5, atol=1e-5)
    if steps == 10:  # and both approach the exact flow map expm(2 A) (first / second order)
        exact = expm(2 * A2)
        assert np.abs(midpoint - exact).max() < 0.1 * np.abs(euler - exact).max()


@pytest.mark.parametrize("solver", [{"likelihood_steps": 50},
                                    {"likelihood_steps": "adaptive", "likelihood_rtol": 1e-7, "likelihood_atol": 1e-7}],
                         ids=["rk4", "dopri5"])
def test_exact_trace_likelihood_of_a_time_dependent_linear_flow(solver):
    """log p_1(x) = log N(z; 0, I) - int_0^1 div v dt = log N(expm(-2A) x; 0, I) - 2 tr(A): the
    flow expands volume by exp(tr(A) int a), so the density at the data end is lower by it."""
    method = FlowMatching(TOY, model_size="tiny", **solver)
    method.net = TimeLinearField(A2)
    x = 1.5 * torch.randn(200, 2, generator=gen(22), dtype=torch.float64)
    z = x @ torch.tensor(expm(-2 * A2)).T
    closed = gaussian_logp(z, np.eye(2)) - 2 * float(np.trace(A2))
    ll = method.log_likelihood(x.float(), gen(23)).double()
    torch.testing.assert_close(ll, closed, rtol=1e-4, atol=1e-4)  # off by 2e-5 at most (float32 field)
    # a field whose matrices at different times do not commute: v = (a(t) A + t B) x. Its flow
    # map Phi solves dPhi/dt = (a(t) A + t B) Phi, Phi(0) = I (scipy, to 1e-12), which changes if
    # time runs backwards; int_0^1 div v dt = 2 tr(A) + tr(B) / 2
    method.net = TimeLinearField(A2, B2)
    sol = solve_ivp(lambda t, y: ((a_of(t) * A2 + t * B2) @ y.reshape(2, 2)).ravel(), (0.0, 1.0), np.eye(2).ravel(),
                    rtol=1e-12, atol=1e-12)
    z = x @ torch.tensor(np.linalg.inv(sol.y[:, -1].reshape(2, 2))).T
    closed = gaussian_logp(z, np.eye(2)) - float(2 * np.trace(A2) + 0.5 * np.trace(B2))
    ll = method.log_likelihood(x.float(), gen(23)).double()
    torch.testing.assert_close(ll, closed, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ minibatch OT


def test_minibatch_ot_pairing_is_the_optimal_permutation():
    x0, x1 = torch.randn(2, 6, 2, generator=gen(15), dtype=torch.float64)
    paired = ode.minibatch_ot_pairing(x0, x1)
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, x0.tolist()))  # a permutation of the noise
    best = min(float((x0[list(p)] - x1).pow(2).sum()) for p in itertools.permutations(range(6)))
    assert abs(float((paired - x1).pow(2).sum()) - best) < 1e-9
    assert best < float((x0 - x1).pow(2).sum()) - 1e-6  # the identity pairing was not optimal here


def test_minibatch_ot_training_step_uses_the_paired_noise(monkeypatch):
    seen = []
    real = ode.minibatch_ot_pairing
    monkeypatch.setattr(ode, "minibatch_ot_pairing", lambda x0, x1: seen.append(1) or real(x0, x1))
    m = FlowMatching(TOY, model_size="tiny", coupling="minibatch_ot")
    loss = m.training_step("flow", torch.randn(16, 2), 0)["adam"]
    assert seen == [1] and torch.isfinite(loss)


def test_minibatch_ot_pairing_time_is_recorded_per_stage_and_survives_a_resume():
    """The scipy assignment is invisible to the FLOP meter, so its wall time is kept apart in the
    stage's notes (issue 11.4), summed over every step, and carried by the training state."""
    from dataclasses import replace

    tiny = replace(SMOKE, train_flops={"toy2d": 2e9})  # a few steps
    ds = EightGaussians()
    torch.manual_seed(0)
    method = FlowMatching(ds.spec(), model_size="tiny", coupling="minibatch_ot")
    (report,) = train(method, ds.split("train").x, tiny, "toy2d", gen(0))
    assert report.steps > 1 and report.notes["ot_pairings"] == report.steps
    assert report.notes["ot_pairing_s"] > 0
    again = FlowMatching(ds.spec(), model_size="tiny", coupling="minibatch_ot")
    again.load_training_state(method.training_state())
    assert again.stage_end_notes("flow") == report.notes
    assert FlowMatching(ds.spec(), model_size="tiny").stage_end_notes("flow") == {}  # independent: nothing to time


def test_minibatch_ot_pairing_time_does_not_include_importing_scipy():
    """The solver's one-off import (about a second, ~50 pairings of a toy2d batch) is not charged to the
    first step's pairing: a fresh process has scipy.optimize loaded once the method is built."""
    import subprocess
    import sys

    code = ("import sys; from gmbench.data.toy2d import EightGaussians; "
            "from gmbench_methods.flow_matching.flow_matching import FlowMatching; "
            "assert 'scipy.optimize' not in sys.modules, 'loaded before the method was built: test is moot'; "
            "FlowMatching(EightGaussians().spec(), model_size='tiny', coupling='minibatch_ot'); "
            "print('scipy.optimize' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"



def test_minibatch_ot_pairing_is_timed_from_a_drained_device_queue(monkeypatch):
    """On a GPU the pairing's copy to the CPU waits for the previous step's queued backward and update;
    the timer starts only once the device's queue is drained, so that wait is not pairing time."""
    from gmbench_methods.flow_matching import flow_matching as fm

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(torch.device(device).type))
    fm.synchronize(torch.device("cuda", 0))
    fm.synchronize(torch.device("cpu"))  # nothing queued on a CPU
    assert synced == ["cuda"]

    events = []
    monkeypatch.setattr(fm, "synchronize", lambda device: events.append("drain"))
    real = fm.time.perf_counter
    monkeypatch.setattr(fm, "time", type("T", (), {"perf_counter": staticmethod(lambda: events.append("clock") or real())}))
    method = FlowMatching(EightGaussians().spec(), model_size="tiny", coupling="minibatch_ot")
    method.training_step("flow", EightGaussians().split("train").x[:16], 0)
    assert events == ["drain", "clock", "clock"] and method.ot_pairings == 1


def test_minibatch_ot_totals_resumed_from_a_checkpoint_without_them_are_unknown(tmp_path):
    """A checkpoint written before the totals were kept: the resumed stage's pairing time is unknown
    (None), never the resumed part's passed off as the whole stage's."""
    import json
    from dataclasses import replace

    from gmbench.checkpointing import CheckpointPolicy

    tiny = replace(SMOKE, train_flops={"toy2d": 2e9})
    ds = EightGaussians()
    clock = JumpingClock()
    StopsAtStep3 = stopping_at(FlowMatching, 3, clock)

    folder = tmp_path / "ckpt"

    def build(cls):
        torch.manual_seed(0)
        return cls(ds.spec(), model_size="tiny", coupling="minibatch_ot")

    (cut,) = train(build(StopsAtStep3), ds.split("train").x, tiny, "toy2d", gen(0),
                   checkpoints=CheckpointPolicy(folder, every_s=1e9), clock=clock, deadline=1.0)
    assert cut.stopped and cut.notes["ot_pairings"] == cut.steps == 4
    sidecar = json.loads((folder / "state.json").read_text())
    assert sidecar["method_state"]["ot_pairings"] == 4
    sidecar["method_state"] = {}  # as the code before the totals wrote it
    (folder / "state.json").write_text(json.dumps(sidecar))
    (old,) = train(build(FlowMatching), ds.split("train").x, tiny, "toy2d", gen(0),
                   checkpoints=CheckpointPolicy(folder, every_s=1e9, resume=True))
    assert old.steps > 4 and not old.stopped
    assert old.notes == {"ot_pairing_s": None, "ot_pairings": None}



# ------------------------------------------------------------------ errors and registration


def test_bad_input_fails_with_one_line_messages():
    for kw, match in ((dict(path="ve"), "path must be one of"), (dict(coupling="ot"), "coupling must be one of"),
                      (dict(sigma_min=1.0), "sigma_min must be in"), (dict(vp_eps=0), "vp_eps must be in"),
                      (dict(likelihood_steps=0), "likelihood_steps must be"), (dict(dopri5_rtol=0), "must be positive"),
                      (dict(likelihood_steps="rk4"), "likelihood_steps must be 'auto', 'adaptive' or a positive integer"),
                      (dict(likelihood_rtol=0), "likelihood_rtol and likelihood_atol must be positive")):
        with pytest.raises(ValueError, match=match):
            FlowMatching(TOY, **kw)
    method = FlowMatching(TOY, model_size="tiny")
    for nfe in (0, 2.5, True):
        with pytest.raises(MethodError, match="nfe must be a positive integer"):
            method.sample(4, "euler", nfe, gen())
    with pytest.raises(MethodError, match="Did you mean 'euler'"):
        method.sample(4, "eulr", 10, gen())
    with pytest.raises(MethodError, match="expected inputs of shape"):
        method.log_likelihood(torch.zeros(3, 5), gen())
    with pytest.raises(MethodError, match="does not support 'text'"):
        FlowMatching(DataSpec(name="x", modality="text", shape=(8,), vocab_size=4))


def test_registered_through_the_entry_point_with_its_claims():
    from gmbench.plugins import Registries

    reg = Registries()
    assert reg.methods.get("flow-matching") is FlowMatching
    info = FlowMatching.describe()
    assert info["paper"] == "2210.02747" and [s["name"] for s in info["samplers"]] == ["euler", "midpoint", "dopri5"]
    claim = reg.claims.get("fm-ot-beats-vp-toy2d-swd-10")
    assert claim.a.method == "flow-matching" and claim.b.method == "flow-matching[path=vp]" and claim.a.nfe == 10
    assert reg.claims.get("fm-ot-lead-closes-digits-fid").nfes == (10, 50)


# ------------------------------------------------------------------ it learns (smoke budget)


def test_learns_8gaussians_at_smoke_budget():
    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x[:2000]
    torch.manual_seed(0)
    method = FlowMatching(ds.spec(), model_size=SMOKE.model_size)
    (report,) = train(method, train_x, SMOKE, "toy2d", gen(0))
    assert report.flops <= SMOKE.flops_for("toy2d") and report.steps > 100
    # trivial baselines: the standard normal (the flow's own start) and the data's fitted Gaussian
    fit = torch.distributions.MultivariateNormal(train_x.mean(0), torch.cov(train_x.T))
    prior_swd = sliced_wasserstein(torch.randn(2000, 2, generator=gen(3)), test_x)
    fit_swd = sliced_wasserstein(fit.sample((2000,)), test_x)
    for sampler, nfe in (("euler", 10), ("midpoint", 5), ("dopri5", 1)):
        swd = sliced_wasserstein(method.sample(2000, sampler, nfe, gen(1)), test_x)
        assert swd < 0.7 * fit_swd and swd < 0.3 * prior_swd, (sampler, swd, fit_swd, prior_swd)
    nll = float(-method.log_likelihood(test_x[:300], gen(2)).mean())
    assert nll < float(-fit.log_prob(test_x[:300]).mean()) - 0.5, nll


# ------------------------------------------------------------------ the conformance kit


class TestFlowMatchingConformance(MethodConformance):
    method = FlowMatching


class TestFlowMatchingConformanceMinibatchOT(MethodConformance):
    method = FlowMatching
    hparams = {"coupling": "minibatch_ot", "path": "vp"}


class TestFlowMatchingConformanceImages(MethodConformance):
    method = FlowMatching
    dataset = "digits"
    hparams = {"likelihood_steps": 2}
