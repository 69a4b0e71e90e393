"""Tests for the `ddpm` plugin (Ho et al., arXiv 2006.11239; DDIM sampler, arXiv 2010.02502).

Closed forms checked, each derived here independently of the plugin's code:

* the forward marginal ``q(x_t|x_0)`` (Eq. 4) from the product of the ``alpha_t``, and its
  empirical moments;
* the posterior ``q(x_s|x_t,x_0)`` (Eqs. 6-7, and its respaced form) by conditioning the
  joint Gaussian of ``(x_s, x_t)`` given ``x_0``; DDIM's ``sigma^2(eta)`` (Eq. 16) against
  it: ``eta = 1`` is the posterior variance ``beta~'`` on the respaced sequence, and Eq. 12
  with it is the posterior's step (so ``ddim-eta1`` and ``ancestral-tilde`` sample alike);
* for data ``x_0 ~ N(m, s^2 I)`` the optimal noise predictor
  ``eps*(x_t) = sqrt(1-abar_t)(x_t - sqrt(abar_t) m) / (abar_t s^2 + 1 - abar_t)``.
  With it DDIM (eta = 0) is an affine map of the initial noise whose gain is a product of
  per-step gains (computed here), ancestral sampling reproduces ``N(m, s^2)``, and the
  expected variational bound has a closed form (``E||x_0 - E[x_0|x_t]||^2`` is the
  posterior variance), which must lie above the true entropy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.digits import Digits
from gmbench.data.toy2d import EightGaussians
from gmbench.method import MethodError
from gmbench.metrics.base import EvalContext
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.diffusion.ddpm import DDPM
from gmbench_methods.diffusion.schedules import NoiseSchedule, space_timesteps

T = 1000
TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
# abar_0..abar_T of the paper's linear schedule, computed without the plugin
ABAR = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, T))])


def spaced(nfe: int) -> list[int]:
    """iDDPM's even spacing over 1..T with both ends: 1 + round(i (T-1) / (nfe-1))."""
    return (1 + np.round(np.arange(nfe) * (T - 1) / max(nfe - 1, 1))).astype(int).tolist() if nfe > 1 else [T]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class GaussianOptimalEps(nn.Module):
    """The exact E[eps | x_t] for x_0 ~ N(m, s^2 I); counts its calls."""

    def __init__(self, m, s: float, abar=ABAR):
        super().__init__()
        self.m, self.s, self.calls = torch.as_tensor(m, dtype=torch.float64), s, 0
        self.abar, self.T = torch.tensor(abar), len(abar) - 1

    def forward(self, x, t):
        self.calls += 1
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1) * self.T  # the plugin passes t / T
        k = t.round().long()
        assert torch.allclose(t, k.double(), atol=1e-3) and 1 <= int(k.min()) and int(k.max()) <= self.T
        ab = self.abar[k].reshape(-1, *([1] * (x.ndim - 1)))  # broadcast over vectors and images
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * self.m) / (ab * self.s**2 + 1 - ab)
        return eps.to(x.dtype)


def optimal_ddpm(m=(1.0, -2.0), s=0.5, **kw) -> tuple[DDPM, GaussianOptimalEps]:
    method = DDPM(TOY, model_size="tiny", ema_decay=0, **kw)
    method.net = GaussianOptimalEps(m, s)  # no EMA: sampling and the bound use .net
    return method, method.net


# ------------------------------------------------------------ forward process and posterior


def test_linear_schedule_matches_paper():
    sched = NoiseSchedule.linear(T)
    assert sched.T == T
    torch.testing.assert_close(sched.betas, torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    torch.testing.assert_close(sched.abar, torch.tensor(ABAR), rtol=1e-12, atol=0)
    assert ABAR[T] < 5e-5  # q(x_T) is close to N(0, I)


@pytest.mark.parametrize("t", [1, 10, 500, T])
def test_forward_marginal_closed_form_and_empirical(t):
    sched = NoiseSchedule.linear(T)
    x0 = torch.tensor([[1.5, -0.5]]).expand(200_000, 2)
    mean, var = sched.q_moments(x0[:1], torch.tensor([t]))
    torch.testing.assert_close(mean, math.sqrt(ABAR[t]) * x0[:1])
    torch.testing.assert_close(var, torch.full((1, 2), 1 - ABAR[t]))
    xt = sched.q_sample(x0, torch.full((len(x0),), t), torch.randn(x0.shape, generator=gen()))
    se_mean = math.sqrt((1 - ABAR[t]) / len(x0))
    assert (xt.mean(0) - mean[0]).abs().max() < 5 * se_mean
    assert (xt.var(0) / (1 - ABAR[t]) - 1).abs().max() < 5 * math.sqrt(2 / len(x0))


@pytest.mark.parametrize("t,s", [(2, 1), (50, 49), (T, T - 1), (T, 1), (300, 120), (5, 0)])
def test_posterior_matches_gaussian_conditioning(t, s):
    """q(x_s|x_t,x_0) from the joint of (x_s, x_t) given x_0 (Eqs. 6-7, respaced when s < t-1)."""
    sched = NoiseSchedule.linear(T)
    x0 = torch.tensor([[0.7, -1.2], [3.0, 0.1]], dtype=torch.float64)
    xt = torch.tensor([[0.2, 0.4], [-1.0, 2.0]], dtype=torch.float64)
    a_t, a_s = ABAR[t], ABAR[s]
    # x_s = sqrt(a_s) x0 + sqrt(1-a_s) e1 ; x_t = sqrt(a_t/a_s) x_s + sqrt(1 - a_t/a_s) e2
    cov_st = math.sqrt(a_t / a_s) * (1 - a_s)
    mean = math.sqrt(a_s) * x0 + cov_st / (1 - a_t) * (xt - math.sqrt(a_t) * x0)
    var = (1 - a_s) - cov_st**2 / (1 - a_t)
    got_mean, got_var = sched.q_posterior(x0, xt, torch.tensor([t] * 2), torch.tensor([s] * 2))
    torch.testing.assert_close(got_mean, mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_var, torch.full_like(x0, var), rtol=1e-7, atol=1e-12)


def test_posterior_mean_at_predicted_x0_is_algorithm_2():
    """mu~(x0_pred(x_t, eps), x_t) = (x_t - beta_t / sqrt(1-abar_t) eps) / sqrt(alpha_t) (Eq. 11)."""
    sched = NoiseSchedule.linear(T)
    xt, eps = torch.randn(3, 64, 2, generator=gen(1), dtype=torch.float64)[:2]
    for t in (1, 2, 77, T):
        beta = 1 - ABAR[t] / ABAR[t - 1]
        mean, _ = sched.q_posterior(sched.predict_x0(xt, t, eps), xt, t)
        torch.testing.assert_close(mean, (xt - beta / math.sqrt(1 - ABAR[t]) * eps) / math.sqrt(1 - beta))


def test_timestep_spacing_and_respaced_betas():
    assert space_timesteps(T, T).tolist() == list(range(1, T + 1))
    assert space_timesteps(T, 1).tolist() == [T]
    for nfe in (2, 10, 20, 50, 999):
        taus = space_timesteps(T, nfe)
        assert len(taus) == nfe and taus[0] == 1 and taus[-1] == T and bool((taus.diff() > 0).all())
        assert taus.tolist() == spaced(nfe)
        # the respaced chain's betas reproduce abar on the sub-sequence
        sched = NoiseSchedule.linear(T)
        prev = torch.cat([torch.zeros(1, dtype=torch.long), taus[:-1]])
        beta = sched.respaced_beta(taus, prev, torch.zeros(nfe))
        torch.testing.assert_close(torch.cumprod(1 - beta.reshape(-1), 0), torch.tensor(ABAR[taus.numpy()]))
    with pytest.raises(ValueError, match="1..1000"):
        space_timesteps(T, 0)


@pytest.mark.parametrize("t,s", [(2, 1), (T, T - 1), (T, 1), (300, 120), (50, 0)])
def test_ddim_variance_eta1_is_the_respaced_posterior_variance(t, s):
    """DDIM Eq. 16 at eta = 1 is beta~' of the respaced step (here from Gaussian conditioning),
    eta scales it quadratically, eta = 0 adds none; with sigma^2 = beta~' the noise coefficient
    of Eq. 12, sqrt(1 - abar_s - sigma^2), is the posterior mean's (so Eq. 12 is Eq. 7's step);
    the large variance sigma-hat^2 = beta' (DDIM T1) is at least beta~'."""
    sched = NoiseSchedule.linear(T)
    like = torch.zeros(1, 2)
    a_t, a_s = ABAR[t], ABAR[s]
    cov_st = math.sqrt(a_t / a_s) * (1 - a_s)  # Cov(x_s, x_t | x_0)
    posterior_var = (1 - a_s) - cov_st**2 / (1 - a_t)
    for eta in (0.0, 0.5, 1.0):
        got = float(sched.ddim_sigma2(t, s, eta, like))
        assert got == pytest.approx(eta**2 * posterior_var, rel=1e-9, abs=1e-15)
    assert float(sched.respaced_beta_tilde(t, s, like)) == pytest.approx(posterior_var, rel=1e-9, abs=1e-15)
    noise_coef = math.sqrt(max(1 - a_s - float(sched.ddim_sigma2(t, s, 1.0, like)), 0.0))
    assert noise_coef == pytest.approx(cov_st / math.sqrt(1 - a_t), rel=1e-7)
    assert float(sched.respaced_beta(t, s, like)) >= posterior_var


def test_ddim_eta1_and_ancestral_tilde_are_one_chain():
    """Same generator, same samples: Eq. 12 at eta = 1 and Eq. 7 with beta~' draw the same noise
    and have the same mean (also with clipping, where both use the clipped x0 and its eps)."""
    mu, s = CLIPPED_DATA
    method = DDPM(IMAGE, model_size="tiny", ema_decay=0)
    method.net = GaussianOptimalEps(mu, s)
    for nfe in (3, 20):
        a = method.sample(64, "ddim-eta1", nfe, gen(21))
        b = method.sample(64, "ancestral-tilde", nfe, gen(21))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        c = method.sample(64, "ancestral", nfe, gen(21))  # the large variance differs
        assert (a - c).abs().max() > 0.01


def test_sigma2_sets_the_bound_not_the_samplers():
    m, s = (1.0, -2.0), 0.5
    by_beta, _ = optimal_ddpm(m, s, sigma2="beta")
    by_tilde, _ = optimal_ddpm(m, s, sigma2="beta_tilde")
    for sampler in ("ancestral", "ancestral-tilde", "ddim-eta1"):
        assert torch.equal(by_beta.sample(16, sampler, 10, gen(2)), by_tilde.sample(16, sampler, 10, gen(2)))
    x0 = torch.tensor([[1.0, -2.0], [1.5, -1.5]])
    assert not torch.equal(by_beta.log_likelihood(x0, gen(3)), by_tilde.log_likelihood(x0, gen(3)))


# ------------------------------------------------------ the optimal model for Gaussian data


def ddim_gain(nfe: int, s: float) -> float:
    """DDIM on x0 ~ N(m, s^2) maps x_T to m + G (x_T - sqrt(abar_T) m); G = product of step gains."""
    taus = [0] + spaced(nfe)
    g = 1.0
    for t, prev in zip(taus[:0:-1], taus[-2::-1]):
        a, b = ABAR[t], ABAR[prev]
        g *= (math.sqrt(a * b) * s**2 + math.sqrt((1 - a) * (1 - b))) / (a * s**2 + 1 - a)
    return g


@pytest.mark.parametrize("nfe", [20, 50, T])
def test_ddim_with_optimal_eps_is_the_exact_affine_map(nfe):
    m, s, n = torch.tensor([1.0, -2.0]), 0.5, 20_000
    method, _ = optimal_ddpm(m, s)
    x = method.sample(n, "ddim", nfe, gen(3))
    z = torch.randn(n, 2, generator=gen(3))  # the sampler's x_T
    gain = ddim_gain(nfe, s)
    torch.testing.assert_close(x, m + gain * (z - math.sqrt(ABAR[T]) * m), rtol=1e-4, atol=1e-4)
    # DDIM under-disperses at few steps and converges to N(m, s^2) as steps grow
    assert abs(gain / s - 1) < {20: 0.16, 50: 0.06, T: 0.005}[nfe]
    assert (x.mean(0) - m).abs().max() < 0.02 and (x.std(0) / s - 1).abs().max() < {20: 0.16, 50: 0.07, T: 0.02}[nfe]


@pytest.mark.parametrize("sampler", ["ancestral", "ancestral-tilde"])
def test_ancestral_with_optimal_eps_samples_the_data_distribution(sampler):
    m, s, n = torch.tensor([1.0, -2.0]), 0.5, 20_000
    method, _ = optimal_ddpm(m, s)
    x = method.sample(n, sampler, T, gen(4))
    assert (x.mean(0) - m).abs().max() < 4 * s / math.sqrt(n)
    assert (x.std(0) / s - 1).abs().max() < 0.02


def expected_bound(m: torch.Tensor, s: float, sigma2: str, a=ABAR) -> float:
    """E over x_0 ~ N(m, s^2 I) of the bound (Eq. 5) for the optimal model, in nats."""
    d, T = len(m), len(a) - 1  # noqa: N806 - the paper's T, here of this schedule
    post_var = lambda t: s**2 * (1 - a[t]) / (a[t] * s**2 + 1 - a[t])  # noqa: E731 - Var(x0 | x_t)
    total = 0.5 * (d * (1 - a[T]) + a[T] * (float(m @ m) + d * s**2) - d - d * math.log(1 - a[T]))  # L_T
    beta1 = 1 - a[1]
    total += 0.5 * d * math.log(2 * math.pi * beta1) + d * post_var(1) / (2 * beta1)  # L_0
    for t in range(2, T + 1):
        beta = 1 - a[t] / a[t - 1]
        tilde = (1 - a[t - 1]) / (1 - a[t]) * beta
        var = beta if sigma2 == "beta" else tilde
        coef_x0 = math.sqrt(a[t - 1]) * beta / (1 - a[t])  # mu~ - mu_theta = coef_x0 (x0 - E[x0|x_t])
        total += 0.5 * d * (math.log(var / tilde) + tilde / var - 1) + d * coef_x0**2 * post_var(t) / (2 * var)
    return total


@pytest.mark.parametrize("sigma2,vlb_draws", [("beta", "all"), ("beta_tilde", "all"), ("beta", 10)])
def test_bound_with_optimal_eps_is_above_the_true_nll_and_matches_closed_form(sigma2, vlb_draws):
    m, s, n = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5, 4000
    method, _ = optimal_ddpm(m, s, sigma2=sigma2, vlb_draws=vlb_draws)
    x0 = (m + s * torch.randn(n, 2, generator=gen(5), dtype=torch.float64)).float()
    nll = -torch.distributions.Normal(m, s).log_prob(x0.double()).sum(1)
    gap = -method.log_likelihood(x0, gen(6)).double() - nll  # bound minus true NLL, per example
    se = float(gap.std()) / math.sqrt(n)
    entropy = 0.5 * 2 * math.log(2 * math.pi * math.e * s**2)
    expected_gap = expected_bound(m, s, sigma2) - entropy
    assert abs(float(gap.mean()) - expected_gap) < 4 * se
    if sigma2 == "beta":  # sigma_t^2 = beta_t is near-optimal here: a tight bound
        assert 0 <= expected_gap < 0.01 and float(gap.mean()) > -4 * se
    else:  # beta~ under-estimates the reverse variance for spread-out data: a looser bound
        assert expected_gap > 0.5 and float(gap.mean()) > 0.5


# ------------------------------------ every sampler path at few steps, against its exact law
#
# With the exact eps of N(mu, s^2) every unclipped update is affine in x_t, so the sample after
# the respaced chain is Gaussian with a mean and variance computed here step by step in float64.
# With clipping the chain is piecewise affine: DDIM's final law is integrated over x_T on a fine
# grid, ancestral sampling's is estimated from two million float64 chains. Each step below is
# written from the papers (DDIM Eq. 12 with eta = 0; q(x_s|x_t,x_0) by Gaussian conditioning,
# which gives Eq. 7 with the respaced beta' = 1 - abar_t / abar_s), not from the plugin's code.
# Tolerances are 5 standard errors of the plugin's 262,144 sampled values, so a wrong variance
# (beta_t instead of beta'_t) or a DDIM step that ignores its clipped x0 fails by a wide margin.

IMAGE = DataSpec(name="img", modality="image", shape=(1, 16, 16), levels=256, value_range=(-1.0, 1.0))
N_IMAGES = 1024  # x 256 pixels, all i.i.d.: the exact denoiser acts pixel by pixel
UNCLIPPED_DATA = (0.5, 0.5)  # (mu, s)
# Mostly beyond the clip range [-1, 1]: x0_hat is clipped at intermediate steps, where the
# epsilon recomputed from the clipped x0_hat changes the DDIM step (at the last step it cannot).
CLIPPED_DATA = (2.0, 1.0)
# (sampler, clip): the clipped stochastic references simulate two million chains (seconds each),
# so ddim-eta1 is checked unclipped here and against ancestral-tilde, sample for sample, below
SAMPLER_PATHS = [(name, clip) for name in ("ancestral", "ancestral-tilde", "ddim", "ddim-eta1") for clip in (False, True)
                 if (name, clip) != ("ddim-eta1", True)]


def reference_step(x, t: int, prev: int, sampler: str, mu: float, s: float, clip: bool):
    """One step t -> prev of the sampler in float64: (deterministic part at x, added noise variance)."""
    a_t, a_s = ABAR[t], ABAR[prev]
    eps = math.sqrt(1 - a_t) * (x - math.sqrt(a_t) * mu) / (a_t * s**2 + 1 - a_t)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    if clip:
        x0 = np.clip(x0, -1.0, 1.0)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)  # the noise the clipped x0 implies
    if sampler == "ddim":
        return math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps, 0.0
    if sampler == "ddim-eta1":  # DDIM Eq. 12 with sigma^2 of Eq. 16 at eta = 1
        sig2 = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        return math.sqrt(a_s) * x0 + math.sqrt(1 - a_s - sig2) * eps, sig2
    # x_s = sqrt(a_s) x0 + sqrt(1-a_s) e1, x_t = sqrt(a_t/a_s) x_s + sqrt(1-a_t/a_s) e2: condition on x_t
    cov = math.sqrt(a_t / a_s) * (1 - a_s)
    mean = math.sqrt(a_s) * x0 + cov / (1 - a_t) * (x - math.sqrt(a_t) * x0)
    if prev == 0:
        return mean, 0.0  # the last step adds no noise
    return mean, (1 - a_t / a_s if sampler == "ancestral" else (1 - a_s) - cov**2 / (1 - a_t))


def reference_moments(sampler: str, nfe: int, clip: bool, n: int):
    """Mean and variance of the final sample, and the standard errors of n sampled values' moments."""
    mu, s = CLIPPED_DATA if clip else UNCLIPPED_DATA
    taus = spaced(nfe)
    steps = list(zip(reversed(taus), reversed([0] + taus[:-1])))
    if not clip:  # affine steps: propagate N(m, v) exactly from x_T ~ N(0, 1)
        m, v = 0.0, 1.0
        for t, prev in steps:
            c0, _ = reference_step(0.0, t, prev, sampler, mu, s, clip)
            c1, noise = reference_step(1.0, t, prev, sampler, mu, s, clip)
            m, v = c0 + (c1 - c0) * m, (c1 - c0) ** 2 * v + noise
        return m, v, math.sqrt(v / n), v * math.sqrt(2 / n)
    if sampler == "ddim":  # deterministic: integrate the final map over x_T on a grid
        x = z = np.linspace(-12.0, 12.0, 480_001)
        w = np.exp(-0.5 * z**2)
        w /= w.sum()
        for t, prev in steps:
            x, _ = reference_step(x, t, prev, sampler, mu, s, clip)
        m = float((w * x).sum())
        v, m4 = float((w * (x - m) ** 2).sum()), float((w * (x - m) ** 4).sum())
        return m, v, math.sqrt(v / n), math.sqrt((m4 - v**2) / n)
    rng, n_ref = np.random.default_rng(12345), 2_000_000  # stochastic and non-linear: simulate
    x = rng.standard_normal(n_ref)
    for t, prev in steps:
        x, noise = reference_step(x, t, prev, sampler, mu, s, clip)
        if noise:
            x = x + math.sqrt(noise) * rng.standard_normal(n_ref)
    m, v, m4 = float(x.mean()), float(x.var()), float(((x - x.mean()) ** 4).mean())
    widen = math.sqrt(1 + n / n_ref)  # the reference's own Monte-Carlo error
    return m, v, widen * math.sqrt(v / n), widen * math.sqrt((m4 - v**2) / n)


@pytest.mark.parametrize("sampler,clip", SAMPLER_PATHS, ids=[f"{n}-{'clipped' if c else 'unclipped'}" for n, c in SAMPLER_PATHS])
@pytest.mark.parametrize("nfe", [5, 20])
def test_sampler_at_few_steps_has_the_exact_law_of_its_respaced_chain(sampler, clip, nfe):
    mu, s = CLIPPED_DATA if clip else UNCLIPPED_DATA
    method = DDPM(IMAGE, model_size="tiny", ema_decay=0, clip_denoised=clip)
    method.net = GaussianOptimalEps(mu, s)
    x = method.sample(N_IMAGES, sampler, nfe, gen(100 + nfe)).double().flatten()
    mean, var, se_mean, se_var = reference_moments(sampler, nfe, clip, x.numel())
    assert abs(float(x.mean()) - mean) < 5 * se_mean, (float(x.mean()), mean, se_mean)
    assert abs(float(x.var()) - var) < 5 * se_var, (float(x.var()), var, se_var)
    if clip:
        assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("vlb_draws", [1, 10, 100, T - 2, T - 1, T, "all"])
def test_bound_strata_partition_the_terms_t_2_to_T(vlb_draws):
    """Every term t = 2..T of the bound's sum lies in exactly one stratum, weighted by its size;
    from T - 1 draws on (one per term) the sum is exact: each t once, with weight 1."""
    method, _ = optimal_ddpm(vlb_draws=vlb_draws)
    t, weights = method._vlb_timesteps(64, gen(8))
    assert t.shape == (len(weights), 64) and float(weights.sum()) == T - 1
    upper = torch.cumsum(weights, 0).long() + 2  # stratum k holds 2 + sum(w[:k]) .. upper[k] - 1
    lower = upper - weights.long()
    assert int(lower[0]) == 2 and int(upper[-1]) == T + 1
    assert bool(((t >= lower[:, None]) & (t < upper[:, None])).all())
    if vlb_draws == "all" or vlb_draws >= T - 1:
        assert t[:, 0].tolist() == list(range(2, T + 1)) and bool((weights == 1).all())
    else:
        assert len(weights) <= vlb_draws


@pytest.mark.parametrize("sigma2", ["beta", "beta_tilde"])
def test_bound_of_a_short_chain_matches_closed_form_term_by_term(sigma2):
    """T = 10 steps with betas from 0.05 to 0.3: q(x_T|x_0) stays far from N(0, I) and beta_1 is
    not 1e-4, so an error in L_T or in L_0 moves the bound by a visible amount rather than by
    1e-5 nats, as it would with the paper's schedule; all T - 1 KL terms are summed."""
    t_short, m, s, n = 10, torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5, 4000
    abar = np.concatenate([[1.0], np.cumprod(1 - np.linspace(0.05, 0.3, t_short))])
    method = DDPM(TOY, model_size="tiny", ema_decay=0, T=t_short, beta_start=0.05, beta_end=0.3, sigma2=sigma2,
                  vlb_draws="all")
    method.net = GaussianOptimalEps(m, s, abar)
    x0 = (m + s * torch.randn(n, 2, generator=gen(15), dtype=torch.float64)).float()
    bound = -method.log_likelihood(x0, gen(16)).double()
    se = float(bound.std()) / math.sqrt(n)
    # L_T is deterministic in x_0 (0.5 abar_T |x_0|^2 + const): take it at this sample's |x_0|^2
    # rather than its expectation, so only the Monte-Carlo terms are left to the tolerance
    l_t_shift = 0.5 * abar[t_short] * float(x0.double().pow(2).sum(1).mean() - (m @ m + 2 * s**2))
    expected = expected_bound(m, s, sigma2, abar) + l_t_shift
    assert abs(float(bound.mean()) - expected) < 4 * se, (float(bound.mean()), expected, se)


# ------------------------------------------------------------------ sampler mechanics


SAMPLERS = ("ancestral", "ddim", "ancestral-tilde", "ddim-eta1")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_nfe_is_the_number_of_network_calls(sampler):
    method, net = optimal_ddpm()
    for nfe in (1, 7, 50):
        net.calls = 0
        x = method.sample(8, sampler, nfe, gen())
        assert net.calls == nfe and x.shape == (8, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_is_deterministic_given_the_seed(sampler):
    method, _ = optimal_ddpm()
    a, b, c = (method.sample(64, sampler, 20, gen(seed)) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddim_uses_only_the_initial_noise():
    method, _ = optimal_ddpm()
    g = gen(9)
    method.sample(32, "ddim", 20, g)
    after_one_draw = gen(9)
    torch.randn(32, 2, generator=after_one_draw)
    assert torch.equal(g.get_state(), after_one_draw.get_state())


def test_images_are_clipped_to_the_data_range():
    spec = Digits().spec()
    method = DDPM(spec, model_size="tiny", ema_decay=0)
    nn.init.normal_(method.net.out.weight, std=1.0)  # a wild untrained network
    for sampler in SAMPLERS:
        x = method.sample(4, sampler, 5, gen())
        assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_bad_input_fails_with_one_line_messages():
    method, _ = optimal_ddpm()
    for nfe in (0, T + 1, 2.5, True):
        with pytest.raises(MethodError, match=r"nfe must be an integer in 1\.\.T=1000"):
            method.sample(4, "ddim", nfe, gen())
    with pytest.raises(MethodError, match="Did you mean 'ddim'"):
        method.sample(4, "ddmi", 10, gen())
    with pytest.raises(MethodError, match="expected inputs of shape"):
        method.log_likelihood(torch.zeros(3, 5), gen())
    with pytest.raises(ValueError, match="sigma2 must be one of"):
        DDPM(TOY, sigma2="large")
    with pytest.raises(ValueError, match="vlb_draws must be"):
        DDPM(TOY, vlb_draws=0)
    with pytest.raises(ValueError, match="T must be a positive integer"):
        DDPM(TOY, T=0)
    with pytest.raises(MethodError, match="does not support 'text'"):
        DDPM(DataSpec(name="x", modality="text", shape=(8,), vocab_size=4))


def test_ema_warm_up_and_parameter_count():
    method = DDPM(TOY, model_size="tiny", ema_decay=0.9999)
    assert method.num_parameters() == sum(p.numel() for p in method.net.parameters())
    assert set(method.modules()) == {"net", "ema"}
    w_net, w_ema = method.net.out.weight, method.ema.out.weight
    for step in (0, 90, 10**6):
        with torch.no_grad():
            w_net.fill_(1.0)
            w_ema.fill_(0.0)
        method.on_step_end("denoise", step)
        decay = min(0.9999, (1 + step) / (10 + step))
        torch.testing.assert_close(w_ema, torch.full_like(w_ema, 1 - decay))
    assert set(DDPM(TOY, model_size="tiny", ema_decay=0).modules()) == {"net"}


def test_registered_through_the_entry_point():
    from gmbench.plugins import Registries

    reg = Registries()
    assert reg.methods.get("ddpm") is DDPM
    info = DDPM.describe()
    assert info["paper"] == "2006.11239" and info["likelihood"] == "bound"
    assert {s["name"]: s["deterministic"] for s in info["samplers"]} == {
        "ancestral": False, "ddim": True, "ancestral-tilde": False, "ddim-eta1": False}
    method = DDPM(TOY, model_size="tiny")
    assert [dict(method.sampler(n).params) for n in SAMPLERS] == [
        {"sigma2": "beta"}, {"eta": 0.0}, {"sigma2": "beta_tilde"}, {"eta": 1.0}]


def test_registered_claims_name_real_samplers():
    from gmbench.plugins import Registries

    reg = Registries().claims
    claims = [reg.get(n) for n in reg]
    names = {c.name for c in claims if c.a.method == "ddpm"}
    assert {"ddim-beats-ddim-eta1-digits-fid-10", "large-variance-collapses-digits-fid-10",
            "ddim-beats-ancestral-digits-fid-10"} <= names
    known = {s.name for s in DDPM.samplers}
    for c in claims:
        for cell in (c.a, c.b):
            assert cell is None or cell.method != "ddpm" or cell.sampler in known | {None}, (c.name, cell)


# ------------------------------------------------------------------ it learns (smoke budget)


def test_learns_8gaussians_at_smoke_budget():
    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x[:2000]
    torch.manual_seed(0)
    method = DDPM(ds.spec(), model_size=SMOKE.model_size)
    (report,) = train(method, train_x, SMOKE, "toy2d", gen(0))
    assert report.flops <= SMOKE.flops_for("toy2d") and report.steps > 100
    # trivial baseline: the Gaussian with the data's mean and covariance
    fit = torch.distributions.MultivariateNormal(train_x.mean(0), torch.cov(train_x.T))
    baseline_swd = sliced_wasserstein(fit.sample((2000,)), test_x)
    swd = sliced_wasserstein(method.sample(2000, "ancestral", 20, gen(1)), test_x)
    assert swd < 0.5 * baseline_swd, (swd, baseline_swd)
    # its bound on the test NLL beats the fitted Gaussian's exact NLL
    method.vlb_draws = 50
    bound_nll = float(-method.log_likelihood(test_x[:500], gen(2)).mean())
    assert bound_nll < float(-fit.log_prob(test_x[:500]).mean()) - 0.3, bound_nll


def test_digits_smoke_run_gives_finite_samples_and_bits_per_dim():
    ds = Digits()
    budget = dataclasses.replace(SMOKE, train_flops={"image": SMOKE.flops_for("image") / 2})  # half: test time
    metric = HeldOutLikelihood()
    metric.max_examples = 64
    ctx = EvalContext(dataset=ds, n_samples=16, seed=0)
    torch.manual_seed(0)
    method = DDPM(ds.spec(), model_size=budget.model_size, vlb_draws=20)
    untrained_bpd = metric.compute(ctx, method=method)["test_bpd"]
    (report,) = train(method, ds.split("train").x, budget, "image", gen(0))
    assert report.steps >= 10
    for sampler in ("ancestral", "ddim"):
        x = method.sample(16, sampler, 10, gen(1))
        assert x.shape == (16, 1, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1
    bpd = metric.compute(ctx, method=method)["test_bpd"]
    assert math.isfinite(bpd) and bpd < untrained_bpd - 1, (bpd, untrained_bpd)


# ------------------------------------------------------------------ the conformance kit


class TestDDPMConformance(MethodConformance):
    method = DDPM


class TestDDPMConformanceImages(MethodConformance):
    method = DDPM
    dataset = "digits"
    hparams = {"vlb_draws": 5}
