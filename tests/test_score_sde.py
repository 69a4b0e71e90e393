"""Tests for the `score-sde` plugin (Song et al., arXiv 2011.13456) and its SDEs (``sde.py``).

Closed forms checked, each written here independently of the plugin's code:

* each SDE's perturbation kernel ``N(m(t) x_0, s(t)^2 I)`` (Appendix B: VE with the released
  code's ``s = sigma(t)``, VP, sub-VP) against its formula, and against the moments of the SDE
  itself simulated with a fine Euler-Maruyama scheme from the plugin's drift and diffusion;
* for Gaussian data ``N(mu, v0 I)`` the exact score of ``p_t`` is
  ``-(x - m(t) mu) / V(t)``, ``V = m^2 v0 + s^2``. With it the probability-flow ODE is the affine
  map ``x(t) = m(t) mu + sqrt(V(t) / V(1)) (x(1) - m(1) mu)``, so the ODE samplers and the ODE
  likelihood have closed forms; the reverse-diffusion predictor, the PC sampler and the
  corrector-only sampler are affine Gaussian chains whose laws are propagated step by step;
* for a Gaussian mixture the score of the smoothed mixture is the minimiser of the plugin's
  DSM loss (the regression target's conditional mean): the loss along ``c s*`` is lowest at
  ``c = 1``, and a wrong score (the mixture smoothed by the wrong noise) is detected.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.toy2d import EightGaussians
from gmbench.method import MethodError
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.diffusion.score_sde import ScoreSDE
from gmbench_methods.diffusion.sde import SubVPSDE, VESDE, VPSDE, make_sde

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
IMAGE = DataSpec(name="img", modality="image", shape=(1, 3, 3), levels=256, value_range=(-1.0, 1.0))
SDES = ("ve", "vp", "subvp")
B0, B1, SMIN, SMAX = 0.1, 20.0, 0.01, 10.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the closed forms, written from the paper -----------------------------------------------


def kernel(name: str, t: float) -> tuple[float, float]:
    """(m(t), s(t)) of p_0t (Appendix B, Eqs. 29-33; VE with the code's s = sigma(t))."""
    if name == "ve":
        return 1.0, SMIN * (SMAX / SMIN) ** t
    big_b = B0 * t + 0.5 * (B1 - B0) * t * t  # int_0^t beta
    m = math.exp(-0.5 * big_b)
    return m, math.sqrt(1 - math.exp(-big_b)) if name == "vp" else 1 - math.exp(-big_b)


def prior_std(name: str) -> float:
    return SMAX if name == "ve" else 1.0


def toy_method(name: str, **kw) -> ScoreSDE:
    return ScoreSDE(TOY, model_size="tiny", sde=name, sigma_min=SMIN, sigma_max=SMAX, ema_decay=0, **kw)


class GaussianScore(nn.Module):
    """``eps*(x, t) = -s(t) score_t(x)`` for data N(mu, v0 I): the exact noise predictor; counts calls."""

    def __init__(self, name: str, mu, v0: float):
        super().__init__()
        self.name, self.mu, self.v0, self.calls = name, torch.as_tensor(mu, dtype=torch.float64), v0, 0

    def forward(self, x, t):
        self.calls += 1
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        ms = [kernel(self.name, float(ti)) for ti in t]
        m = torch.tensor([a for a, _ in ms], dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        s = torch.tensor([b for _, b in ms], dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        mu = self.mu.reshape(1, *x.shape[1:])
        score = -(x.double() - m * mu) / (m**2 * self.v0 + s**2)
        return (-s * score).to(x.dtype)


def with_gaussian(name: str, spec=TOY, mu=(1.0, -2.0), v0=0.25, **kw) -> tuple[ScoreSDE, GaussianScore]:
    method = ScoreSDE(spec, model_size="tiny", sde=name, sigma_min=SMIN, sigma_max=SMAX, ema_decay=0, **kw)
    method.net = GaussianScore(name, mu, v0)
    return method, method.net


def big_v(name: str, t: float, v0: float) -> float:
    m, s = kernel(name, t)
    return m * m * v0 + s * s


# ------------------------------------------------------------------------- the SDEs themselves


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("t", [1e-5, 0.01, 0.3, 1.0])
def test_kernel_matches_the_papers_closed_form(name, t):
    sde = make_sde(name, SMIN, SMAX, B0, B1)
    m, s = kernel(name, t)
    assert float(sde.mean_coef(t)) == pytest.approx(m, rel=1e-12)
    assert float(sde.std(t)) == pytest.approx(s, rel=1e-9)
    assert sde.prior_std == prior_std(name)
    # the same coefficients for a batch of times
    ts = torch.tensor([t, 0.5 * t], dtype=torch.float64)
    torch.testing.assert_close(sde.std(ts), torch.tensor([s, kernel(name, 0.5 * t)[1]], dtype=torch.float64))


@pytest.mark.parametrize("name", SDES)
def test_kernel_is_the_law_of_the_sde(name):
    """The moments of a linear SDE dx = c(t) x dt + g(t) dw obey mean' = c mean and
    var' = 2 c var + g^2 (its Fokker-Planck equation for Gaussians): integrated with fine RK4
    steps from the plugin's own drift and diffusion, they reproduce the kernel at every t."""
    sde = make_sde(name, SMIN, SMAX, B0, B1)
    steps = 1000
    h = 1.0 / steps
    grid = torch.arange(2 * steps + 1, dtype=torch.float64) * (h / 2)  # every RK4 stage time
    c = sde.drift(torch.ones(len(grid), 1, dtype=torch.float64), grid)[:, 0].numpy()  # f = c(t) x
    g2 = (sde.diffusion(grid) ** 2).numpy()
    # VE's p_0 is the data smoothed by N(0, sigma_min^2) (the code's kernel, see sde.py)
    mean, var = 1.0, (SMIN**2 if name == "ve" else 0.0)
    for k in range(steps):
        i = 2 * k
        rhs = lambda j, m, v: (c[j] * m, 2 * c[j] * v + g2[j])  # noqa: E731
        k1 = rhs(i, mean, var)
        k2 = rhs(i + 1, mean + h / 2 * k1[0], var + h / 2 * k1[1])
        k3 = rhs(i + 1, mean + h / 2 * k2[0], var + h / 2 * k2[1])
        k4 = rhs(i + 2, mean + h * k3[0], var + h * k3[1])
        mean += h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        var += h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        if (k + 1) % 200 == 0:
            m, s = kernel(name, (k + 1) * h)
            assert mean == pytest.approx(m, rel=1e-7) and math.sqrt(var) == pytest.approx(s, rel=1e-6), (k, mean, var, m, s)


def test_sub_vp_variance_is_below_vp_and_diffusions_match_the_paper():
    vp, sub = VPSDE(B0, B1), SubVPSDE(B0, B1)
    ts = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    assert bool((sub.std(ts) < vp.std(ts)).all())
    big_b = B0 * ts + 0.5 * (B1 - B0) * ts**2
    beta = B0 + ts * (B1 - B0)
    torch.testing.assert_close(vp.diffusion(ts), beta.sqrt())
    torch.testing.assert_close(sub.diffusion(ts), (beta * (1 - torch.exp(-2 * big_b))).sqrt())
    ve = VESDE(SMIN, SMAX)
    sigma = SMIN * (SMAX / SMIN) ** ts
    torch.testing.assert_close(ve.diffusion(ts), sigma * math.sqrt(2 * math.log(SMAX / SMIN)))
    # the drifts: VE none, VP-type -beta x / 2
    x = torch.randn(50, 2, generator=gen(), dtype=torch.float64)
    torch.testing.assert_close(sub.drift(x, ts), -0.5 * beta[:, None] * x)
    assert float(ve.drift(x, 0.3).abs().max()) == 0.0


@pytest.mark.parametrize("name", SDES)
def test_discretisations_reproduce_the_kernel_over_a_grid(name):
    """VE: the G^2 of a grid sum to sigma(1)^2 - sigma(eps)^2 (SMLD's chain); VP: the (1 - beta) of
    a grid multiply to m(1)^2 / m(eps)^2 (DDPM's chain); sub-VP: Euler-Maruyama's increments."""
    sde = make_sde(name, SMIN, SMAX, B0, B1)
    grid = np.linspace(1.0, 1e-3, 11)
    x = torch.ones(1, 1, dtype=torch.float64)
    fs, g2s = zip(*(sde.discretize(x, t, s) for t, s in zip(grid[:-1], grid[1:])))
    if name == "ve":
        assert sum(float(g) for g in g2s) == pytest.approx(kernel("ve", 1)[1] ** 2 - kernel("ve", 1e-3)[1] ** 2, rel=1e-10)
        assert all(float(f.abs().max()) == 0 for f in fs)
    elif name == "vp":
        alpha = [1 - float(g) for g in g2s]
        assert np.prod(alpha) == pytest.approx((kernel("vp", 1)[0] / kernel("vp", 1e-3)[0]) ** 2, rel=1e-10)
        for f, a in zip(fs, alpha):  # f = (sqrt(1 - beta) - 1) x
            assert float(f) == pytest.approx(math.sqrt(a) - 1, rel=1e-12)
    else:
        for (t, s), f, g2 in zip(zip(grid[:-1], grid[1:]), fs, g2s):
            beta = B0 + t * (B1 - B0)
            assert float(f) == pytest.approx(-0.5 * beta * (t - s), rel=1e-9)
            assert float(g2) == pytest.approx(beta * (1 - math.exp(-2 * (B0 * t + 0.5 * (B1 - B0) * t * t))) * (t - s), rel=1e-9)


# ------------------------------------------------------------ samplers with the exact Gaussian score


@pytest.mark.parametrize("name", SDES)
def test_reverse_and_probability_flow_drifts(name):
    """score = -eps / s; pf drift = f - g^2 score / 2 at random points (against the formulas)."""
    method, _ = with_gaussian(name)
    x = torch.randn(64, 2, generator=gen(2))
    t = 0.37
    m, s = kernel(name, t)
    v = big_v(name, t, 0.25)
    mu = torch.tensor([1.0, -2.0])
    score = -(x - m * mu) / v
    torch.testing.assert_close(method.score(method.net, x, t), score, rtol=1e-5, atol=1e-5)
    if name == "ve":
        f, g2 = torch.zeros_like(x), (SMIN * (SMAX / SMIN) ** t) ** 2 * 2 * math.log(SMAX / SMIN)
    else:
        beta = B0 + t * (B1 - B0)
        big_b = B0 * t + 0.5 * (B1 - B0) * t * t
        f, g2 = -0.5 * beta * x, beta * (1 if name == "vp" else 1 - math.exp(-2 * big_b))
    torch.testing.assert_close(method.pf_drift(method.net, x, t), f - 0.5 * g2 * score, rtol=1e-5, atol=1e-5)
    # the PF ODE of a Gaussian is the affine map x(t) = m mu + sqrt(V(t)/V(1)) (x(1) - m(1) mu):
    # its time derivative at t equals the drift
    h = 1e-4
    x1 = torch.randn(8, 2, generator=gen(3), dtype=torch.float64)

    def path(tt):
        mt, _ = kernel(name, tt)
        m1, _ = kernel(name, 1.0)
        return mt * mu.double() + math.sqrt(big_v(name, tt, 0.25) / big_v(name, 1.0, 0.25)) * (x1 - m1 * mu.double())

    deriv = (path(t + h) - path(t - h)) / (2 * h)
    torch.testing.assert_close(method.pf_drift(method.net, path(t).float(), t).double(), deriv, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", SDES)
def test_probability_flow_samplers_are_the_exact_affine_map(name):
    method, net = with_gaussian(name)
    mu, n = torch.tensor([1.0, -2.0], dtype=torch.float64), 512
    eps = method.sampling_eps
    z = prior_std(name) * torch.randn(n, 2, generator=gen(4)).double()  # the sampler's x(1)
    m1, _ = kernel(name, 1.0)
    want = kernel(name, eps)[0] * mu + math.sqrt(big_v(name, eps, 0.25) / big_v(name, 1.0, 0.25)) * (z - m1 * mu)
    x = method.sample(n, "ode-adaptive", 1, gen(4)).double()
    torch.testing.assert_close(x, want, rtol=2e-3, atol=2e-3)
    net.calls = 0
    x = method.sample(n, "ode", 400, gen(4)).double()
    assert net.calls == 400  # torchdiffeq's fixed-grid Euler: one call per step
    assert float((x - want).abs().max()) < 0.05 * float(want.abs().max())


def chain_moments(method: ScoreSDE, name: str, nfe: int, v0: float, mu: float) -> tuple[float, float]:
    """Mean and variance of one coordinate after the reverse-diffusion predictor, propagated exactly:
    with the exact Gaussian score every update is affine in x plus independent Gaussian noise.
    (The corrector's step size depends on the draw's own norms: its chain is not affine.)"""
    eps = method.sampling_eps
    ts = [1 - k * (1 - eps) / nfe for k in range(nfe + 1)]

    def score_coef(t):  # score(x, t) = a x + b
        m, _ = kernel(name, t)
        v = big_v(name, t, v0)
        return -1 / v, m * mu / v

    mean, var = 0.0, prior_std(name) ** 2
    for k, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        if name == "ve":
            fc, g2 = 0.0, kernel("ve", t)[1] ** 2 - kernel("ve", s)[1] ** 2
        elif name == "vp":
            g2 = 1 - (kernel("vp", t)[0] / kernel("vp", s)[0]) ** 2
            fc = math.sqrt(1 - g2) - 1
        else:
            beta = B0 + t * (B1 - B0)
            fc = -0.5 * beta * (t - s)
            g2 = beta * (1 - math.exp(-2 * (B0 * t + 0.5 * (B1 - B0) * t * t))) * (t - s)
        a, b = score_coef(t)
        lin = 1 - fc + g2 * a  # x - f + G^2 score
        mean, var = lin * mean + g2 * b, lin * lin * var + (0.0 if k == nfe - 1 else g2)  # no noise at the end
    return mean, var


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("nfe", [10, 200])
def test_reverse_diffusion_with_exact_score_has_the_law_of_its_chain(name, nfe):
    mu, v0, n = 0.5, 0.25, 4096
    method, _ = with_gaussian(name, spec=IMAGE, mu=torch.full((1, 3, 3), mu), v0=v0, snr=0.16)
    method.clip_range = None
    x = method.sample(n, "reverse-diffusion", nfe, gen(5)).double().flatten()
    mean, var = chain_moments(method, name, nfe, v0, mu)
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / x.numel())
    assert abs(float(x.var()) / var - 1) < 5 * math.sqrt(2 / x.numel())
    if nfe == 200:  # and the chain has converged to p_eps
        assert abs(var / big_v(name, method.sampling_eps, v0) - 1) < {"ve": 0.05, "vp": 0.03, "subvp": 0.05}[name]


def test_langevin_corrector_step_rule():
    """Algorithms 4-5: e = 2 alpha (r ||z|| / ||g||)^2, x <- x + e g + sqrt(2 e) z; norms averaged
    over the batch (the released code) or per example."""
    for norm in ("batch", "example"):
        method, _ = with_gaussian("vp", corrector_norm=norm, snr=0.3)
        x = torch.randn(16, 2, generator=gen(6))
        t, alpha = 0.4, 0.97
        got = method.langevin_step(method.net, x, t, alpha, gen(7))
        z = torch.randn(16, 2, generator=gen(7))
        m, _ = kernel("vp", t)
        g = -(x - m * torch.tensor([1.0, -2.0])) / big_v("vp", t, 0.25)
        zn, gn = z.norm(dim=1), g.norm(dim=1)
        if norm == "batch":
            zn, gn = zn.mean(), gn.mean()
        e = (2 * alpha * (0.3 * zn / gn) ** 2).reshape(-1, 1) if norm == "example" else 2 * alpha * (0.3 * zn / gn) ** 2
        torch.testing.assert_close(got, x + e * g + (2 * e).sqrt() * z, rtol=1e-5, atol=1e-5)
    # VP-type correctors scale by alpha = 1 - beta of the step, VE by 1
    assert make_sde("ve", SMIN, SMAX, B0, B1).corrector_alpha(0.5, 0.4) == 1.0
    assert make_sde("vp", SMIN, SMAX, B0, B1).corrector_alpha(0.5, 0.4) == pytest.approx(
        (kernel("vp", 0.5)[0] / kernel("vp", 0.4)[0]) ** 2)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_pc_and_corrector_with_exact_score_sample_the_data(name):
    """With the exact score, PC at 100 steps lands on p_eps; the corrector alone, from the prior
    with one Langevin step per level, is further from it than PC (Score SDE T1's ordering)."""
    mu, v0, n = 0.5, 0.25, 2048
    method, _ = with_gaussian(name, spec=IMAGE, mu=torch.full((1, 3, 3), mu), v0=v0)
    method.clip_range = None
    target_var = big_v(name, method.sampling_eps, v0)
    pc = method.sample(n, "pc", 100, gen(8)).double().flatten()
    corr = method.sample(n, "corrector", 100, gen(8)).double().flatten()
    assert abs(float(pc.mean()) - mu) < 0.02 and abs(float(pc.var()) / target_var - 1) < 0.05
    err = lambda x: abs(float(x.mean()) - mu) + abs(math.sqrt(float(x.var())) - math.sqrt(target_var))  # noqa: E731
    assert err(corr) > 2 * err(pc), (err(corr), err(pc))


# ------------------------------------------------------------ likelihood through the ODE


def gaussian_pf_log_likelihood(name: str, x: torch.Tensor, mu, v0: float, eps: float) -> torch.Tensor:
    """The PF-ODE log-likelihood of x for data N(mu, v0 I), in closed form:
    log p(x) = log N(z(1); 0, c^2 I) + (D/2) log(V(1) / V(eps)), z(1) = m(1) mu + sqrt(V(1)/V(eps)) (x - m(eps) mu)."""
    d = x[0].numel()
    m1, me = kernel(name, 1.0)[0], kernel(name, eps)[0]
    ratio = math.sqrt(big_v(name, 1.0, v0) / big_v(name, eps, v0))
    z1 = (m1 * mu + ratio * (x - me * mu)).double().flatten(1)
    c = prior_std(name)
    return -0.5 * (z1.pow(2).sum(1) / c**2 + d * math.log(2 * math.pi * c * c)) + d * math.log(ratio)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("spec", [TOY, IMAGE], ids=["toy-exact", "image-hutchinson"])
@pytest.mark.parametrize("steps", [60, "adaptive"])
def test_ode_likelihood_of_gaussian_data_equals_closed_form(name, spec, steps):
    """The change of variables along the PF ODE (RK4, and dopri5 at tight tolerances) gives the
    closed form.

    The Jacobian of the Gaussian's PF field is a multiple of I, so Hutchinson's estimate is exact
    here too: the image path (scaling, time reversal) is checked to the same tolerance."""
    mu = torch.tensor([1.0, -2.0]) if spec is TOY else torch.linspace(-0.5, 0.5, 9).reshape(1, 3, 3)
    tol = {"likelihood_rtol": 1e-6, "likelihood_atol": 1e-6} if steps == "adaptive" else {}
    method, _ = with_gaussian(name, spec=spec, mu=mu, v0=0.25, likelihood_steps=steps, **tol)
    assert method.likelihood == ("exact" if spec is TOY else "estimate")
    x = mu + 0.5 * torch.randn(32, *spec.shape, generator=gen(9))
    ll = method.log_likelihood(x, gen(10)).double()
    want = gaussian_pf_log_likelihood(name, x, mu, 0.25, method.train_eps)
    torch.testing.assert_close(ll, want, rtol=0, atol=2e-3 * spec.dims)
    if name == "vp":  # the VP prior is nearly p_1, so this is nearly the data's own density
        me = kernel(name, method.train_eps)[0]
        true = torch.distributions.Normal(me * mu.double(), math.sqrt(big_v(name, method.train_eps, 0.25)))
        assert float((ll - true.log_prob(x.double()).flatten(1).sum(1)).abs().max()) < 0.05 * spec.dims


def test_default_likelihood_converges_on_sharp_data_where_few_rk4_steps_do_not():
    """Data concentrated like quantised pixels (std 0.01 per dimension) make the VP flow stiff near
    t = eps: the old default, 8 fixed RK4 steps, is off by more than a nat per dimension (the
    published digits records read -4.7 bits/dim), while the default adaptive solver meets the
    closed form. Exact scores, so only the integrator can be wrong."""
    mu, v0 = torch.linspace(-0.5, 0.5, 9).reshape(1, 3, 3), 1e-4
    x = mu + 0.01 * torch.randn(16, 1, 3, 3, generator=gen(9))
    adaptive, _ = with_gaussian("vp", spec=IMAGE, mu=mu, v0=v0)
    assert adaptive.likelihood_steps == "adaptive"
    want = gaussian_pf_log_likelihood("vp", x, mu, v0, adaptive.train_eps)
    torch.testing.assert_close(adaptive.log_likelihood(x, gen(10)).double(), want, rtol=0, atol=2e-3 * 9)
    rk4, _ = with_gaussian("vp", spec=IMAGE, mu=mu, v0=v0, likelihood_steps=8)
    assert float((rk4.log_likelihood(x, gen(10)).double() - want).abs().min()) > 9.0


def test_likelihood_solver_settings_are_checked():
    with pytest.raises(ValueError, match="likelihood_steps must be 'auto', 'adaptive' or a positive integer"):
        toy_method("vp", likelihood_steps="dopri")
    with pytest.raises(ValueError, match="likelihood_rtol and likelihood_atol must be positive"):
        toy_method("vp", likelihood_atol=0.0)


# ------------------------------------------------------- the DSM target and the mixture's score


MIX_MU = torch.tensor([[-3.0, 0.0], [2.0, 2.0], [1.0, -3.0]], dtype=torch.float64)
MIX_W = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MIX_S = torch.tensor([0.3, 0.6, 0.4], dtype=torch.float64)


def mixture_score(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Score of the mixture smoothed by the kernel: sum_k w_k N(x; m mu_k, (m^2 s_k^2 + s^2) I); m, s per row."""
    x = x.double()
    var = m[:, None] ** 2 * MIX_S[None] ** 2 + s[:, None] ** 2  # (N, K)
    diff = x[:, None, :] - m[:, None, None] * MIX_MU[None]  # (N, K, 2)
    logp = torch.log(MIX_W)[None] - 0.5 * diff.pow(2).sum(-1) / var - torch.log(2 * math.pi * var)
    post = torch.softmax(logp, dim=1)
    return -(post[..., None] * diff / var[..., None]).sum(1)


class MixtureEps(nn.Module):
    """``c * eps*`` for the mixture's exact score (``smear`` > 1 smooths with the wrong noise)."""

    def __init__(self, sde, c: float = 1.0, smear: float = 1.0):
        super().__init__()
        self.sde, self.c, self.smear = sde, c, smear

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        m, s = self.sde.mean_coef(t), self.sde.std(t)
        return (-self.c * s[:, None] * mixture_score(x, m, self.smear * s)).to(x.dtype)


@pytest.mark.parametrize("name", SDES)
def test_dsm_loss_is_minimised_by_the_smoothed_mixture_score(name):
    """The loss along c s* is a quadratic in c; its minimiser is 1 for the exact score of p_t (the
    DSM target's conditional mean) and moves off 1 when the score smooths with 1.5 s(t)."""
    method = toy_method(name)
    n, g = 50_000, gen(11)
    comp = torch.multinomial(MIX_W, n, replacement=True, generator=g)
    x0 = (MIX_MU[comp] + MIX_S[comp, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()
    t = 0.02 + 0.98 * torch.rand(n, generator=g, dtype=torch.float64)  # where s(t) is not tiny
    z = torch.randn(n, 2, generator=g)

    def minimiser(smear):
        losses = [method.dsm_loss(MixtureEps(method.sde, c, smear), x0, t, z).double() for c in (0.0, 1.0, 2.0)]
        # l(c) = A c^2 + B c + C per example; the minimiser of the mean is -mean(B) / (2 mean(A))
        a = (losses[2] - 2 * losses[1] + losses[0]) / 2
        b = losses[1] - losses[0] - a
        c_star = float(-b.mean() / (2 * a.mean()))
        # delta method: the standard error of c*
        se = float((b + 2 * c_star * a).std() / (2 * a.mean()) / math.sqrt(n))
        return c_star, se

    c_star, se = minimiser(1.0)
    assert abs(c_star - 1) < 5 * se + 1e-3, (c_star, se)
    c_wrong, se_wrong = minimiser(1.5)
    assert abs(c_wrong - 1) > 10 * se_wrong, (c_wrong, se_wrong)


def test_training_loss_is_the_lambda_weighted_dsm_objective():
    """training_step: t ~ U[train_eps, 1], x_t from the kernel, loss = mean lambda(t) ||s_theta - (-z / s)||^2
    = mean ||s(t) s_theta + z||^2 (with eps_theta = 0 the loss is E z^2 = 1 per dimension)."""
    method = toy_method("vp")
    batch = torch.randn(4096, 2, generator=gen(12))
    torch.manual_seed(0)
    loss = float(method.training_step("score", batch, 0)["adam"])
    torch.manual_seed(0)
    t = method.train_eps + (1 - method.train_eps) * torch.rand(4096, dtype=torch.float64)
    z = torch.randn_like(batch)
    assert loss == pytest.approx(float(z.pow(2).mean()), rel=1e-6)
    xt = method.sde.perturb(batch, t, z)
    m = torch.tensor([kernel("vp", float(ti))[0] for ti in t[:5]])
    s = torch.tensor([kernel("vp", float(ti))[1] for ti in t[:5]])
    torch.testing.assert_close(xt[:5].double(), m[:, None] * batch[:5].double() + s[:, None] * z[:5].double(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ sampler mechanics


def test_nfe_is_the_number_of_network_calls():
    method, net = with_gaussian("vp")
    for sampler, per_step in (("reverse-diffusion", 1), ("pc", 2), ("corrector", 1), ("ode", 1)):
        assert method.sampler(sampler).calls_per_step == per_step
        for nfe in (1, 7):
            net.calls = 0
            x = method.sample(4, sampler, nfe, gen())
            assert net.calls == per_step * nfe and x.shape == (4, 2) and torch.isfinite(x).all()
    assert method.sampler("ode-adaptive").adaptive


@pytest.mark.parametrize("sampler", ["reverse-diffusion", "pc", "corrector", "ode"])
def test_sampling_is_deterministic_given_the_seed(sampler):
    method, _ = with_gaussian("ve")
    a, b, c = (method.sample(64, sampler, 5, gen(seed)) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_input_fails_with_one_line_messages():
    method, _ = with_gaussian("vp")
    for nfe in (0, 2.5, True):
        with pytest.raises(MethodError, match="nfe must be a positive integer"):
            method.sample(4, "pc", nfe, gen())
    with pytest.raises(MethodError, match="Did you mean 'pc'"):
        method.sample(4, "pcc", 10, gen())
    with pytest.raises(MethodError, match="expected inputs of shape"):
        method.log_likelihood(torch.zeros(3, 5), gen())
    with pytest.raises(ValueError, match="sde must be one of"):
        ScoreSDE(TOY, sde="edm")
    with pytest.raises(ValueError, match="corrector_norm must be one of"):
        ScoreSDE(TOY, corrector_norm="max")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ScoreSDE(TOY, sde="ve", sigma_min=1.0, sigma_max=0.5)


def test_default_noise_ranges():
    assert ScoreSDE(TOY, model_size="tiny").sde_name == "vp"
    toy = ScoreSDE(TOY, model_size="tiny", sde="ve")
    assert (toy.sde.sigma_min, toy.sde.sigma_max) == (0.01, 10.0)
    img = ScoreSDE(DataSpec(name="d", modality="image", shape=(1, 8, 8), levels=17, value_range=(-1.0, 1.0)),
                   model_size="tiny", sde="ve")
    assert img.sde.sigma_min == pytest.approx(0.02) and img.sde.sigma_max == pytest.approx(16.0)
    assert img.likelihood == "estimate" and toy.likelihood == "exact"
    assert ScoreSDE(TOY, sde="vp").sampling_eps == 1e-3 and toy.sampling_eps == 1e-5


def test_registered_through_the_entry_point():
    from gmbench.plugins import Registries

    reg = Registries()
    assert reg.methods.get("score-sde") is ScoreSDE
    for name in ("score-sde-pc-beats-predictor-toy2d-swd-10", "score-sde-predictor-beats-corrector-digits-fid-50"):
        claim = reg.claims.get(name)
        assert claim.paper == "2011.13456" and claim.a.method == "score-sde"
    equal_calls = reg.claims.get("score-sde-pc-beats-corrector-toy2d-swd-50")
    assert (equal_calls.a.sampler, equal_calls.a.nfe, equal_calls.b.sampler, equal_calls.b.nfe) == ("pc", 50, "corrector", 100)


# ------------------------------------------------------------------ it learns (smoke budget)


def test_learns_8gaussians_at_smoke_budget():
    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x[:1000]
    torch.manual_seed(0)
    method = ScoreSDE(ds.spec(), model_size=SMOKE.model_size)
    (report,) = train(method, train_x, SMOKE, "toy2d", gen(0))
    assert report.flops <= SMOKE.flops_for("toy2d") and report.steps > 100
    fit = torch.distributions.MultivariateNormal(train_x.mean(0), torch.cov(train_x.T))
    fit_swd = sliced_wasserstein(fit.sample((1000,)), test_x)
    prior_swd = sliced_wasserstein(torch.randn(1000, 2, generator=gen(3)), test_x)  # the VP prior
    for sampler, nfe in (("reverse-diffusion", 20), ("pc", 20), ("ode", 20)):
        swd = sliced_wasserstein(method.sample(1000, sampler, nfe, gen(1)), test_x)
        assert swd < 0.7 * fit_swd and swd < 0.2 * prior_swd, (sampler, swd, fit_swd, prior_swd)
    method.likelihood_steps = 20
    nll = float(-method.log_likelihood(test_x[:100], gen(2)).mean())
    assert nll < float(-fit.log_prob(test_x[:100]).mean()) - 0.5, nll


# ------------------------------------------------------------------ the conformance kit


class TestScoreSDEConformance(MethodConformance):
    method = ScoreSDE
    hparams = {"sde": "ve", "corrector_norm": "example"}  # the default (VP, batch norms) runs on images below


class TestScoreSDEConformanceImages(MethodConformance):
    method = ScoreSDE
    dataset = "digits"
    hparams = {"likelihood_steps": 1, "ode_rtol": 1e-2, "ode_atol": 1e-2}  # dopri5 on digits: seconds, not minutes
