"""Tests for the `ncsn` plugin (Song & Ermon, arXiv 1907.05600).

Closed forms checked, each written here independently of the plugin's code:

* the perturbation ``x~ = x + sigma z`` and the DSM target ``-(x~ - x) / sigma^2`` (Eq. 5), the
  ``lambda(sigma) = sigma^2`` weighting (Eq. 6), the geometric levels and their defaults;
* for a Gaussian mixture the score of the mixture smoothed by ``N(0, sigma^2 I)`` (closed form)
  is the minimiser of the plugin's DSM loss at every level: the loss along ``c s*`` is lowest at
  ``c = 1``, and a score smoothed with the wrong noise is detected;
* annealed Langevin dynamics (Algorithm 1) step by step against the same chain written here,
  with the same random draws; and, with the exact score of Gaussian data ``N(mu, v0 I)``, every
  step is affine plus Gaussian noise, so the law of the sample after ``L T`` steps is
  propagated exactly here and compared with the sampler's moments.
"""

from __future__ import annotations

import dataclasses
import math

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
from gmbench_methods.diffusion.ncsn import NCSN

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
IMAGE = DataSpec(name="img", modality="image", shape=(1, 3, 3), levels=256, value_range=(-1.0, 1.0))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def levels(s1: float, sl: float, n: int) -> list[float]:
    return [s1 * (sl / s1) ** (i / (n - 1)) for i in range(n)]


def sigma_of_input(method: NCSN, u: torch.Tensor) -> torch.Tensor:
    """Invert the plugin's level input u = (log sigma - log sigma_L) / (log sigma_1 - log sigma_L)."""
    lo, hi = math.log(method.sigma_L), math.log(method.sigma_1)
    return torch.exp(lo + u.double() * (hi - lo))


class ScoreNet(nn.Module):
    """Outputs ``score(x, sigma)`` (or ``sigma * score`` for ``score_scaling='sigma'``); counts calls."""

    def __init__(self, method: NCSN, score):
        super().__init__()
        self.method, self.score, self.calls = method, score, 0

    def forward(self, x, u):
        self.calls += 1
        sigma = sigma_of_input(self.method, torch.as_tensor(u).reshape(-1)).reshape(-1, *([1] * (x.ndim - 1)))
        s = self.score(x.double(), sigma)
        if self.method.score_scaling == "sigma":
            s = s * sigma
        return s.to(x.dtype)


def gaussian_score(mu, v0):
    mu = torch.as_tensor(mu, dtype=torch.float64)
    return lambda x, sigma: -(x - mu.reshape(1, *x.shape[1:])) / (v0 + sigma**2)


# ------------------------------------------------------------------ levels and the objective


def test_noise_levels_and_defaults():
    toy = NCSN(TOY, model_size="tiny")
    torch.testing.assert_close(toy.sigmas, torch.tensor(levels(10.0, 0.01, 10), dtype=torch.float64))
    ratios = toy.sigmas[1:] / toy.sigmas[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.001 ** (1 / 9)))
    assert toy.eps == pytest.approx(2e-5)  # the paper's eps at sigma_L = 0.01
    img = NCSN(DataSpec(name="d", modality="image", shape=(1, 8, 8), levels=17, value_range=(-1.0, 1.0)), model_size="tiny")
    assert (img.sigma_1, img.sigma_L, img.L) == (2.0, pytest.approx(0.02), 10)  # the paper's 1, 0.01 on [0, 1]
    assert img.eps == pytest.approx(0.2 * 0.02**2)
    # the network sees log sigma mapped onto [0, 1]
    u = toy.level_input(toy.sigmas)
    torch.testing.assert_close(u, torch.linspace(1, 0, 10))
    custom = NCSN(TOY, model_size="tiny", sigma_1=5.0, sigma_L=0.1, L=4, eps=1e-3)
    torch.testing.assert_close(custom.sigmas, torch.tensor(levels(5.0, 0.1, 4), dtype=torch.float64))
    assert custom.eps == 1e-3


def test_perturbation_and_dsm_target():
    x = torch.randn(64, 2, generator=gen(1))
    z = torch.randn(64, 2, generator=gen(2))
    sigma = torch.rand(64, dtype=torch.float64, generator=gen(3)) + 0.05
    x_tilde, target = NCSN.perturb(x, sigma, z)
    torch.testing.assert_close(x_tilde, x + sigma[:, None].float() * z)
    torch.testing.assert_close(target, -(x_tilde - x) / sigma[:, None].float() ** 2)
    torch.testing.assert_close(target, -z / sigma[:, None].float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scaling", ["none", "sigma"])
def test_loss_is_sigma_squared_weighted_dsm(scaling):
    """loss = mean over examples and dimensions of sigma_i^2 ||s_theta(x~, sigma_i) + (x~ - x) / sigma_i^2||^2,
    with the level drawn uniformly; with s = 0 it is E z^2 = 1 at every level."""
    method = NCSN(TOY, model_size="tiny", score_scaling=scaling)
    x = torch.randn(20_000, 2, generator=gen(4))
    drawn, real_loss = [], method.dsm_loss
    method.dsm_loss = lambda net, xb, lv, zb: drawn.append(lv.clone()) or real_loss(net, xb, lv, zb)
    torch.manual_seed(5)
    zero = float(method.training_step("score", x, 0)["adam"].detach())
    torch.manual_seed(5)
    idx = torch.randint(0, 10, (20_000,))
    z = torch.randn_like(x)
    assert zero == pytest.approx(float(z.pow(2).mean()), rel=1e-6)
    # the levels training_step drew: each of the L = 10 about 2,000 times (binomial sd 42)
    (lv,) = drawn
    assert lv.min() == 0 and lv.max() == 9 and torch.bincount(lv, minlength=10).min() > 1800
    # a known score network: the loss is the weighted squared error against the target
    score = lambda xt, sigma: 0.3 * xt / sigma  # noqa: E731 - any function of (x~, sigma)
    method.net = ScoreNet(method, score)
    got = method.dsm_loss(method.net, x, idx, z).double()
    sigma = torch.tensor(levels(10.0, 0.01, 10), dtype=torch.float64)[idx][:, None]
    xt = x.double() + sigma * z.double()
    want = (sigma**2 * (score(xt, sigma) + (xt - x.double()) / sigma**2) ** 2).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


MIX_MU = torch.tensor([[-3.0, 0.0], [2.0, 2.0], [1.0, -3.0]], dtype=torch.float64)
MIX_W = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MIX_S = torch.tensor([0.3, 0.6, 0.4], dtype=torch.float64)


def mixture_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score of sum_k w_k N(mu_k, s_k^2 I) convolved with N(0, sigma^2 I); sigma (N, 1)."""
    var = MIX_S[None] ** 2 + sigma.reshape(-1, 1) ** 2  # (N, K)
    diff = x[:, None, :] - MIX_MU[None]
    logp = torch.log(MIX_W)[None] - 0.5 * diff.pow(2).sum(-1) / var - torch.log(2 * math.pi * var)
    post = torch.softmax(logp, dim=1)
    return -(post[..., None] * diff / var[..., None]).sum(1)


@pytest.mark.parametrize("scaling", ["none", "sigma"])
def test_dsm_loss_is_minimised_by_the_smoothed_mixture_score(scaling):
    """At each level the DSM target's conditional mean given x~ is the score of the sigma-smoothed
    data (Vincent 2011): the loss along c s* is a quadratic in c minimised at c = 1; the score of
    the mixture smoothed by 2 sigma is not the minimiser."""
    method = NCSN(TOY, model_size="tiny", score_scaling=scaling, sigma_1=3.0, sigma_L=0.1, L=4)
    n, g = 30_000, gen(6)
    comp = torch.multinomial(MIX_W, n, replacement=True, generator=g)
    x = (MIX_MU[comp] + MIX_S[comp, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()
    z = torch.randn(n, 2, generator=g)
    for level in range(method.L):
        idx = torch.full((n,), level)

        def minimiser(smear):
            losses = []
            for c in (0.0, 1.0, 2.0):
                method.net = ScoreNet(method, lambda xt, sigma, c=c: c * mixture_score(xt, smear * sigma))
                losses.append(method.dsm_loss(method.net, x, idx, z).double())
            a = (losses[2] - 2 * losses[1] + losses[0]) / 2  # l(c) = a c^2 + b c + const per example
            b = losses[1] - losses[0] - a
            c_star = float(-b.mean() / (2 * a.mean()))
            return c_star, float((b + 2 * c_star * a).std() / (2 * a.mean()) / math.sqrt(n))

        c_star, se = minimiser(1.0)
        assert abs(c_star - 1) < 5 * se + 1e-3, (level, c_star, se)
        c_wrong, se_wrong = minimiser(2.0)
        assert abs(c_wrong - 1) > 8 * se_wrong, (level, c_wrong, se_wrong)


# ------------------------------------------------------------------ annealed Langevin dynamics


@pytest.mark.parametrize("spec", [TOY, IMAGE], ids=["toy", "image"])
@pytest.mark.parametrize("sampler", ["annealed-langevin", "annealed-langevin-denoise"])
def test_annealed_langevin_is_algorithm_1(spec, sampler):
    """The sampler equals Algorithm 1 written here with the same draws: x_0 uniform on the data range
    (images) or N(0, sigma_1^2 I) (toy2d); alpha_i = eps sigma_i^2 / sigma_L^2;
    x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z, T = nfe // L steps per level; the
    denoising variant replaces the last step by x + sigma_L^2 s(x, sigma_L)."""
    method = NCSN(spec, model_size="tiny", L=4, sigma_1=2.0, sigma_L=0.05, eps=3e-4)
    score = lambda x, sigma: -(x - 0.3) / (0.2 + sigma**2) + 0.1 * torch.sin(x)  # noqa: E731
    method.net = ScoreNet(method, score)
    method.clip_range = None
    n, nfe = 32, 4 * 3 + 2  # T = 3: the two calls beyond L T are not spent
    x = method.sample(n, sampler, nfe, gen(7)).double()
    assert method.net.calls == 12
    g = gen(7)
    shape = (n, *spec.shape)
    if spec is IMAGE:
        ref = (-1 + 2 * torch.rand(shape, generator=g)).double()
    else:
        ref = (2.0 * torch.randn(shape, generator=g)).double()
    for i, sigma in enumerate(levels(2.0, 0.05, 4)):
        alpha = 3e-4 * sigma**2 / 0.05**2
        for t in range(3):
            s = score(ref.float().double(), torch.tensor(sigma, dtype=torch.float64))
            if sampler.endswith("denoise") and i == 3 and t == 2:
                ref = ref + sigma**2 * s
                break
            ref = ref + alpha / 2 * s + math.sqrt(alpha) * torch.randn(shape, generator=g).double()
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-4)


def langevin_law(mu: float, v0: float, s1: float, sl: float, L: int, T: int, eps: float, init_var: float):
    """Exact mean and variance after annealed Langevin with the score of N(mu, v0 + sigma^2)."""
    m, v = 0.0, init_var
    for sigma in levels(s1, sl, L):
        alpha = eps * sigma**2 / sl**2
        a = 1 - alpha / (2 * (v0 + sigma**2))  # x <- a x + (1 - a) mu + sqrt(alpha) z
        for _ in range(T):
            m, v = a * m + (1 - a) * mu, a * a * v + alpha
    return m, v


@pytest.mark.parametrize("T", [1, 10, 100])
def test_annealed_langevin_with_exact_score_has_the_law_of_its_chain(T):
    """Data N(0.5, 0.25) per pixel, the paper's settings scaled to [-1, 1] (sigma 2 -> 0.02, L = 10,
    eps = 0.2 sigma_L^2); from uniform noise (variance 1/3). At T = 100 (the paper's NFE 1000)
    the chain ends near the smoothed data law; at T = 1 far from it."""
    mu, v0, n = 0.5, 0.25, 2048
    method = NCSN(IMAGE, model_size="tiny")
    method.net = ScoreNet(method, gaussian_score(torch.full((1, 3, 3), mu), v0))
    method.clip_range = None
    x = method.sample(n, "annealed-langevin", 10 * T, gen(8)).double().flatten()
    m, v = langevin_law(mu, v0, 2.0, 0.02, 10, T, 0.2 * 0.02**2, 1 / 3)
    se_m, se_v = math.sqrt(v / x.numel()), v * math.sqrt(2 / x.numel())
    assert abs(float(x.mean()) - m) < 5 * se_m + 1e-4  # + the uniform start's own non-Gaussian term
    assert abs(float(x.var()) - v) < 6 * se_v
    if T == 100:
        # near the smoothed law; the low levels' steps (alpha_L = 8e-5 against variance 0.25)
        # barely mix, so the chain keeps ~6% of excess variance from the middle levels
        assert abs(m - mu) < 0.01 and abs(v / (v0 + 0.02**2) - 1) < 0.1
    if T == 1:
        assert abs(v / (v0 + 0.02**2) - 1) > 0.2


def test_nfe_maps_to_steps_per_level():
    method = NCSN(TOY, model_size="tiny")
    method.net = ScoreNet(method, gaussian_score([0.0, 0.0], 1.0))
    for nfe, calls in ((10, 10), (19, 10), (20, 20), (1000, 1000)):
        method.net.calls = 0
        x = method.sample(3, "annealed-langevin-denoise", nfe, gen())
        assert method.net.calls == calls and x.shape == (3, 2) and torch.isfinite(x).all()
    for nfe in (9, 0, 2.5, True):
        with pytest.raises(MethodError, match=r"nfe must be an integer >= L=10"):
            method.sample(3, "annealed-langevin", nfe, gen())
    with pytest.raises(MethodError, match="Did you mean 'annealed-langevin'"):
        method.sample(3, "annealed-langevn", 10, gen())
    with pytest.raises(NotImplementedError):
        method.log_likelihood(torch.zeros(3, 2), gen())
    for bad, match in ((dict(score_scaling="x"), "score_scaling"), (dict(L=1), "L must be"),
                       (dict(sigma_1=0.1, sigma_L=1.0), "sigma_L < sigma_1"), (dict(eps=0.0), "eps must be")):
        with pytest.raises(ValueError, match=match):
            NCSN(TOY, **bad)


def test_sampling_is_deterministic_given_the_seed():
    method = NCSN(IMAGE, model_size="tiny")
    method.net = ScoreNet(method, gaussian_score(torch.zeros(1, 3, 3), 0.25))
    a, b, c = (method.sample(16, "annealed-langevin", 20, gen(seed)) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_registered_through_the_entry_point():
    from gmbench.plugins import Registries

    assert Registries().methods.get("ncsn") is NCSN
    info = NCSN.describe()
    assert info["paper"] == "1907.05600" and info["likelihood"] == "none"


# ------------------------------------------------------------------ it learns (smoke budget)


def test_learns_8gaussians_at_smoke_budget():
    """Trained for half the smoke budget, annealed Langevin with T = 50 steps per level (NFE 500)
    moves its start (N(0, 10^2 I); the chain of an untrained, zero score is a random walk from
    there) onto the data: sliced W2 a fifth of the start's and most samples within 1.5 of a
    mixture centre (98.9% of the data are; measured 79% for seed 0, mode weights uneven, as
    Langevin's are)."""
    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x[:1000]
    budget = dataclasses.replace(SMOKE, train_flops={"toy2d": SMOKE.flops_for("toy2d") / 2})  # half: test time
    torch.manual_seed(0)
    method = NCSN(ds.spec(), model_size=budget.model_size)
    (report,) = train(method, train_x, budget, "toy2d", gen(0))
    assert report.flops <= budget.flops_for("toy2d") and report.steps > 100
    start = method.initial(500, gen(2))
    x = method.sample(500, "annealed-langevin-denoise", 500, gen(1))
    swd, start_swd = sliced_wasserstein(x, test_x), sliced_wasserstein(start, test_x)
    centres = 4 * torch.stack([torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], 1)
    near = lambda y: float((torch.cdist(y, centres).min(1).values < 1.5).float().mean())  # noqa: E731
    assert swd < 0.2 * start_swd and near(x) > 0.6 > 0.2 > near(start), (swd, start_swd, near(x), near(start))


# ------------------------------------------------------------------ the conformance kit


class TestNCSNConformance(MethodConformance):
    method = NCSN
    nfe = 10  # T = nfe // L needs nfe >= L = 10


class TestNCSNConformanceImages(MethodConformance):
    method = NCSN
    dataset = "digits"
    nfe = 10
    hparams = {"score_scaling": "none", "ema_decay": 0.999}  # the paper's output, and an EMA
