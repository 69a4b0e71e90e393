"""Tests for the `ffjord` plugin (Grathwohl et al., arXiv 1810.01367).

Closed forms checked, each derived here independently of the plugin's code:

* Hutchinson's estimator ``eps^T J eps`` with Rademacher ``eps``: mean ``tr J`` and variance
  ``sum_{i<j} (J_ij + J_ji)^2`` (the diagonal terms are constant since ``eps_i^2 = 1``, the
  pair products ``eps_i eps_j`` are uncorrelated with variance 1);
* the exact divergence against ``torch.autograd.functional.jacobian``, values and gradients
  in the parameters (what training back-propagates);
* for a known linear field ``f(z, t) = A z`` the flow maps ``N(0, I)`` to ``N(0, M M^T)``
  with ``M = expm(A)``: the ODE log-likelihood (both traces, every solver, the adjoint) and
  the training loss equal that Gaussian's log-density; the fixed-step samplers give the
  exact powers of their one-step matrices (Euler ``I + hA``, any 4-stage 4th-order RK on a
  linear field the Taylor polynomial of ``expm(hA)`` to 4th order), dopri5 ``expm(A)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

from gmbench.backbones import MLP
from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.toy2d import EightGaussians
from gmbench.method import MethodError
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.flows import ffjord
from gmbench_methods.flows.ffjord import FFJORD, CNFDynamics, SharedTimeMLP

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
IMAGE = DataSpec(name="img", modality="image", shape=(1, 4, 4), levels=17, value_range=(-1.0, 1.0))
A2 = np.array([[-0.3, 0.8], [-0.5, 0.2]])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LinearField(nn.Module):
    """f(z, t) = A z on the flattened input, A a parameter; counts its calls."""

    def __init__(self, A: np.ndarray):
        super().__init__()
        self.A = nn.Parameter(torch.tensor(A, dtype=torch.float32))
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return (x.flatten(1) @ self.A.T).reshape(x.shape)


def with_field(data: DataSpec, A: np.ndarray, **kw) -> tuple[FFJORD, LinearField]:
    method = FFJORD(data, model_size="tiny", **kw)
    method.net = LinearField(A)
    method.dynamics = CNFDynamics(method.net, method.trace)
    return method, method.net


def gaussian_logp(x: torch.Tensor, cov: np.ndarray) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(torch.zeros(len(cov), dtype=torch.float64),
                                                  torch.tensor(cov)).log_prob(x.double().flatten(1))


def flow_samples(A: np.ndarray, n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """n points of N(0, M M^T), M = expm(A), and that covariance."""
    M = expm(A)
    z = torch.randn(n, len(A), generator=gen(seed), dtype=torch.float64)
    return (z @ torch.tensor(M).T).float(), M @ M.T


# ------------------------------------------------------------------ the trace estimators


def test_hutchinson_is_unbiased_with_the_rademacher_variance_on_a_linear_map():
    J = torch.tensor([[1.0, 2.0, -1.0], [0.5, -3.0, 4.0], [2.0, 1.0, 0.25]], dtype=torch.float64)
    z = torch.zeros(200_000, 3, dtype=torch.float64, requires_grad=True)
    method = FFJORD(TOY, model_size="tiny", trace="hutchinson")
    torch.manual_seed(1)
    eps = method._hutchinson_noise(z.detach(), None)  # the training draw (torch's seeded RNG)
    assert set(eps.unique().tolist()) == {-1.0, 1.0}
    est = ffjord.hutchinson_divergence(z @ J.T, z, eps, create_graph=False)
    var = sum(float(J[i, j] + J[j, i]) ** 2 for i in range(3) for j in range(i + 1, 3))  # 2.25 + 1 + 25
    n = len(est)
    assert abs(float(est.mean()) - float(J.trace())) < 4 * math.sqrt(var / n)
    # the sample variance of n draws has standard error about var * sqrt(2 / n) here (< 1%)
    assert abs(float(est.var()) - var) < 0.03 * var, (float(est.var()), var)
    # the evaluation draw comes from the generator it is handed: seeded, and +-1 too
    a, b = (method._hutchinson_noise(z.detach()[:50], gen(5)) for _ in range(2))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}


def _random_mlp(seed: int) -> SharedTimeMLP:
    torch.manual_seed(seed)
    net = SharedTimeMLP(MLP(2, 2, size="tiny", time_scale=10.0))
    nn.init.normal_(net.mlp.out.weight, std=0.3)  # a non-zero field
    return net


def test_exact_divergence_equals_the_autograd_jacobian_trace_and_its_gradient():
    net = _random_mlp(2)
    z = torch.randn(3, 2, generator=gen(3), requires_grad=True)
    t = torch.tensor(0.3)
    div = ffjord.exact_divergence(net(z, t), z, create_graph=True)

    def jacobian_trace():
        jac = [torch.autograd.functional.jacobian(lambda u: net(u[None], t)[0], z[i].detach(), create_graph=True)
               for i in range(len(z))]
        return torch.stack([j.trace() for j in jac])

    ref = jacobian_trace()
    torch.testing.assert_close(div, ref, rtol=1e-5, atol=1e-6)
    assert float(ref.detach().abs().max()) > 0.05  # a field with a real divergence
    # training back-propagates through the divergence: its gradient in the parameters too
    params = list(net.parameters())
    g_div = torch.autograd.grad(div.sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(jacobian_trace().sum(), params, allow_unused=True)
    for a, b in zip(g_div, g_ref):
        if b is None:
            assert a is None or float(a.abs().max()) == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_shared_time_mlp_is_the_mlp():
    net = _random_mlp(4)
    x = torch.randn(7, 2, generator=gen(4))
    for t in (0.0, 0.37, torch.tensor(0.9)):
        torch.testing.assert_close(net(x, t), net.mlp(x, t))
    t_each = torch.rand(7, generator=gen(5))
    torch.testing.assert_close(net(x, t_each), net.mlp(x, t_each))


# ------------------------------------------------------------------ the likelihood of a linear flow


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_ode_log_likelihood_of_a_linear_flow_is_the_gaussian_closed_form(solver):
    method, net = with_field(TOY, A2, solver=solver, train_steps=20, likelihood_solver="train",
                             train_rtol=1e-6, train_atol=1e-6)
    assert method.likelihood == "exact"
    x, cov = flow_samples(A2, 300, 7)
    truth = gaussian_logp(x, cov)
    torch.testing.assert_close(method.log_likelihood(x, gen(8)).double(), truth, rtol=1e-4, atol=1e-4)
    # the training loss is -log p / D of the same flow, averaged over the batch
    loss = method.training_step("flow", x, 0)["adam"]
    assert abs(float(loss.detach()) - float(-truth.mean() / 2)) < 1e-4
    # the default evaluation (dopri5 at rtol = atol = 1e-5) gives the same
    default, _ = with_field(TOY, A2)
    torch.testing.assert_close(default.log_likelihood(x, gen(8)).double(), truth, rtol=1e-4, atol=1e-4)


def test_hutchinson_log_likelihood_is_unbiased_and_labelled_an_estimate():
    rng = np.random.default_rng(12)
    A = 0.3 * rng.standard_normal((16, 16))
    method, _ = with_field(IMAGE, A, likelihood_solver="train", train_steps=10)
    assert method.trace == "hutchinson" and method.likelihood == "estimate" and FFJORD.likelihood == "exact"
    x, cov = flow_samples(A, 1, 13)
    exact = float(gaussian_logp(x, cov))
    draws = method.log_likelihood(x.reshape(1, 1, 4, 4).expand(4000, 1, 4, 4).contiguous(), gen(14)).double()
    assert float(draws.std()) > 0.05  # a genuinely random estimate ...
    assert abs(float(draws.mean()) - exact) < 4 * float(draws.std()) / math.sqrt(len(draws)) + 1e-3  # ... unbiased


def test_adjoint_gives_the_same_loss_and_gradient():
    x, _ = flow_samples(A2, 64, 15)
    grads = []
    for adjoint in (False, True):
        method, net = with_field(TOY, A2, adjoint=adjoint, solver="dopri5", train_rtol=1e-7, train_atol=1e-7)
        loss = method.training_step("flow", x, 0)["adam"]
        loss.backward()
        grads.append((float(loss), net.A.grad.clone()))
    (l0, g0), (l1, g1) = grads
    assert abs(l0 - l1) < 1e-5 and float(g0.abs().max()) > 1e-3
    torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-5)


def test_adjoint_trains_within_its_budget():
    """The host's loop with the adjoint (RK4 x 4 both ways, the default solver): every FLOP,
    counted independently around the whole training, fits the allowance, and the parameters
    moved. (With ``solver="dopri5"`` the same run can fail with BudgetExceeded: a final
    adaptive step may cost more than any before it; see the module doc.)"""
    from dataclasses import replace

    from gmbench.flops import count_cost

    ds = EightGaussians()
    torch.manual_seed(0)
    method = FFJORD(ds.spec(), model_size="tiny", adjoint=True)
    budget = replace(SMOKE, train_flops={"toy2d": 3e9}, batch_size={"toy2d": 32})
    before = [p.detach().clone() for p in method.net.parameters()]
    (report,), cost = count_cost(train, method, ds.split("train").x[:256], budget, "toy2d", gen(0))
    assert report.steps >= 3 and cost.total <= 3e9 and report.flops <= 3e9
    assert any(not torch.equal(a, b) for a, b in zip(before, method.net.parameters()))


# ------------------------------------------------------------------ samplers on a linear field


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_and_rk4_are_their_exact_discrete_maps(steps):
    method, net = with_field(TOY, A2)
    z = torch.randn(8, 2, generator=gen(5))
    hA = A2 / steps
    euler = np.linalg.matrix_power(np.eye(2) + hA, steps)
    taylor4 = np.eye(2) + hA + hA @ hA / 2 + hA @ hA @ hA / 6 + hA @ hA @ hA @ hA / 24
    rk4 = np.linalg.matrix_power(taylor4, steps)
    for sampler, M, calls in (("euler", euler, steps), ("rk4", rk4, 4 * steps)):
        net.calls = 0
        x = method.sample(8, sampler, steps, gen(5))
        assert net.calls == calls == steps * method.sampler(sampler).calls_per_step
        torch.testing.assert_close(x.double(), z.double() @ torch.tensor(M).T, rtol=1e-5, atol=1e-5)


def test_dopri5_sampler_reaches_the_exact_flow_map():
    method, net = with_field(TOY, A2)
    x = method.sample(8, "dopri5", 1, gen(6))
    z = torch.randn(8, 2, generator=gen(6))
    torch.testing.assert_close(x.double(), z.double() @ torch.tensor(expm(A2)).T, rtol=1e-4, atol=1e-4)
    assert 6 <= net.calls < 300
    info = method.sampler("dopri5")
    assert info.adaptive and not info.adjustable_nfe


# ------------------------------------------------------------------ images


def test_images_train_on_dequantised_pixels_and_samples_are_clamped():
    method = FFJORD(IMAGE, model_size="tiny", train_steps=1)
    x = torch.linspace(-1, 1, 17)[torch.randint(0, 17, (500, 1, 4, 4), generator=gen(1))]
    torch.manual_seed(0)
    u = method.dequantise(x)
    width = 2 / 16
    assert float((u - x).abs().max()) <= width / 2 and float((u - x).abs().max()) > 0.9 * width / 2
    assert abs(float((u - x).mean())) < 0.003  # uniform within each bin, centred on its level
    loss = method.training_step("flow", x[:8], 0)["adam"]
    assert torch.isfinite(loss) and loss.requires_grad
    nn.init.normal_(method.net.out.weight, std=5.0)  # a wild field
    for sampler in ("euler", "rk4"):
        a, b = (method.sample(4, sampler, 2, gen(s)) for s in (1, 1))
        assert a.shape == (4, 1, 4, 4) and a.min() >= -1 and a.max() <= 1 and torch.equal(a, b)


# ------------------------------------------------------------------ errors and registration


def test_bad_input_fails_with_one_line_messages():
    for kw, match in ((dict(trace="hutch"), "trace must be one of"), (dict(solver="rk45"), "solver must be one of"),
                      (dict(train_steps=0), "train_steps must be"), (dict(rtol=0), "must be positive"),
                      (dict(likelihood_solver="x"), "likelihood_solver must be"), (dict(adjoint=1), "adjoint must be")):
        with pytest.raises(ValueError, match=match):
            FFJORD(TOY, **kw)
    method = FFJORD(TOY, model_size="tiny")
    for nfe in (0, 2.5, True):
        with pytest.raises(MethodError, match="nfe must be a positive integer"):
            method.sample(4, "euler", nfe, gen())
    with pytest.raises(MethodError, match="Did you mean 'rk4'"):
        method.sample(4, "rk5", 10, gen())
    with pytest.raises(MethodError, match="expected inputs of shape"):
        method.log_likelihood(torch.zeros(3, 5), gen())
    with pytest.raises(MethodError, match="does not support 'text'"):
        FFJORD(DataSpec(name="x", modality="text", shape=(8,), vocab_size=4))


def test_registered_with_its_claims():
    # through the module's hooks (the entry point `ffjord = gmbench_methods.flows.ffjord` is the
    # lead's pyproject.toml; a stale gmbench.egg-info on sys.path can hide newer entry points)
    from gmbench.plugins import Registries, make_plugin_manager

    reg = Registries(make_plugin_manager(extra_plugins=(ffjord,), load_entrypoints=False))
    assert reg.methods.get("ffjord") is FFJORD
    info = FFJORD.describe()
    assert info["paper"] == "1810.01367" and [s["name"] for s in info["samplers"]] == ["euler", "rk4", "dopri5"]
    claim = reg.claims.get("ffjord-beats-realnvp-digits-bpd")
    assert (claim.a.method, claim.b.method, claim.metric, claim.dataset) == ("ffjord", "realnvp", "test_bpd", "digits")
    assert reg.claims.get("ffjord-beats-realnvp-toy2d-nll").dataset == "modality:toy2d"
    assert FFJORD(TOY, model_size="tiny").backbone().startswith("MLP(tiny")


# ------------------------------------------------------------------ it learns (smoke budget)


def test_learns_8gaussians_at_smoke_budget():
    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x[:1000]
    torch.manual_seed(0)
    method = FFJORD(ds.spec(), model_size=SMOKE.model_size)
    (report,) = train(method, train_x, SMOKE, "toy2d", gen(0))
    assert report.flops <= SMOKE.flops_for("toy2d") and report.steps >= 20
    # trivial baseline: the flow's own start, the standard normal
    prior_swd = sliced_wasserstein(torch.randn(1000, 2, generator=gen(3)), test_x)
    for sampler, nfe in (("rk4", 10), ("dopri5", 1)):
        swd = sliced_wasserstein(method.sample(1000, sampler, nfe, gen(1)), test_x)
        assert swd < 0.3 * prior_swd, (sampler, swd, prior_swd)
    nll = float(-method.log_likelihood(test_x[:500], gen(2)).mean())
    prior_nll = float(-ffjord.standard_normal_logp(test_x[:500]).mean())
    true_nll = float(-ds.log_prob(test_x[:500]).mean())
    # far better than the start, and (an exact likelihood of held-out data) not below the truth
    assert nll < prior_nll - 1.0 and nll > true_nll - 0.1, (nll, prior_nll, true_nll)


# ------------------------------------------------------------------ the conformance kit


class TestFFJORDConformance(MethodConformance):
    """The default method (exact trace, RK4 training solve), one RK4 step per training solve
    to keep the kit's two trainings cheap.

    Not run under the kit: ``adjoint=True`` (its independent count uses torch's
    ``FlopCounterMode``, whose module tracker fails on the ``autograd.grad`` torchdiffeq's
    adjoint takes through a module input that is a leaf; ``test_adjoint_trains_within_its_budget``
    checks it under the host's meter) and ``solver="dopri5"`` training (a cost that varies
    per step can end a stage past its allowance, see the module doc)."""

    method = FFJORD
    hparams = {"train_steps": 1}


class TestFFJORDConformanceImages(MethodConformance):
    """Digits on the tiny U-Net, trained with one Euler step per solve (one network call with
    its Hutchinson product and backward): the default RK4 x 4 costs 16 of them per step."""

    method = FFJORD
    dataset = "digits"
    hparams = {"solver": "euler", "train_steps": 1, "likelihood_solver": "train"}
    nfe = 1
