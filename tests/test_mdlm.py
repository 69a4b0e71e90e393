"""Tests for the `mdlm` plugin (Sahoo et al., arXiv 2406.07524).

Closed forms checked: the forward masking rate ``1 - alpha_t``; the NELBO weight
``-alpha'/(1 - alpha)`` against a finite difference; for factorised (i.i.d. token)
data and a denoiser that outputs the true unigram ``p`` the NELBO *equals*
``-log p(x)`` — exactly in expectation over masks (enumerated), and within Monte Carlo
error for the estimator — while any other factorised denoiser ``q`` pays exactly
``L * KL(p || q)`` more; the ancestral sampler with that denoiser draws tokens with
frequencies ``p`` and its masks retrace ``1 - alpha_t``. For a first-order Markov source
the exact denoiser (forward-backward) makes the NELBO tight too, and the sampler
reproduces the source at many steps and loosens at few. The discrete-time bound with
``T`` steps (Eq. 8): its weight in closed form, exact for the unigram denoiser at every
``T``, the marginals' code length at ``T = 1``, looser at fewer steps for the Markov
source (paired on common draws), and recorded by the ``likelihood_steps`` metric.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.method import MethodError
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.discrete_diffusion.masking import (
    CosineSchedule,
    LogLinearSchedule,
    NoiseSchedule,
    discrete_weight,
    get_schedule,
    mask_tokens,
    masked_nelbo,
    snap_to_steps,
    stratified_times,
    subs_log_probs,
)
from gmbench_methods.discrete_diffusion.mdlm import MDLM, DiscreteTimeBound

V = 5  # a small vocabulary for the closed-form checks
P = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08], dtype=torch.float64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def text_spec(length: int, vocab: int = V) -> DataSpec:
    return DataSpec(name="iid", modality="text", shape=(length,), vocab_size=vocab)


class UnigramNet(nn.Module):
    """A denoiser that ignores its input and predicts fixed probabilities ``q``; counts calls."""

    def __init__(self, q: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", q.log().float())
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        return self.logits.expand(*z.shape, -1)


# A first-order Markov source over 4 tokens with rare transitions (probability 0.005),
# so that a sampler which draws dependent tokens independently produces unlikely text.
# (Not zero: the exact denoiser would be undefined after an impossible draw.)
RARE = 0.005
T = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
T = torch.where(T > 0, T, RARE / (1 - RARE) * T.sum(1, keepdim=True))  # rare moves
T = T / T.sum(1, keepdim=True)
_EIG = torch.linalg.eig(T.T)
PI = _EIG.eigenvectors[:, _EIG.eigenvalues.real.argmax()].real.abs()
PI = PI / PI.sum()  # stationary law: the chain starts in it


def markov_log_prob(x: torch.Tensor) -> torch.Tensor:
    return PI.log()[x[:, 0]] + T.log()[x[:, :-1], x[:, 1:]].sum(1)


def markov_sample(n: int, length: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    x = torch.empty(n, length, dtype=torch.long)
    x[:, 0] = torch.multinomial(PI, n, replacement=True, generator=g)
    for i in range(1, length):
        x[:, i] = torch.multinomial(T[x[:, i - 1]], 1, generator=g).squeeze(1)
    return x


class MarkovPosterior(nn.Module):
    """The exact denoiser for the Markov source: ``p(x_l | unmasked tokens)`` by
    forward-backward, masked positions being unobserved. Row by row (no batch-size
    dependent arithmetic), float64; counts calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        n, length = z.shape
        k = len(PI)
        seen = nn.functional.one_hot(z.clamp(max=k - 1), k).double()
        emit = torch.where((z == k)[..., None], torch.ones_like(seen), seen)  # P(observation | token)
        fwd = [PI * emit[:, 0]]
        for i in range(1, length):
            f = (fwd[-1][:, :, None] * T).sum(1) * emit[:, i]
            fwd.append(f / f.sum(1, keepdim=True))
        bwd = [torch.ones(n, k, dtype=torch.float64)]
        for i in range(length - 1, 0, -1):
            b = (T * (emit[:, i] * bwd[0])[:, None, :]).sum(2)
            bwd.insert(0, b / b.sum(1, keepdim=True))
        post = torch.stack(fwd, 1) * torch.stack(bwd, 1)
        return (post / post.sum(-1, keepdim=True)).log()


def markov_mdlm(length: int, **kw) -> MDLM:
    torch.manual_seed(0)
    method = MDLM(text_spec(length, len(PI)), model_size="tiny", **kw)
    method.net = MarkovPosterior()
    return method


def unigram_mdlm(length: int, q: torch.Tensor = P, **kw) -> MDLM:
    torch.manual_seed(0)
    method = MDLM(text_spec(length, len(q)), model_size="tiny", **kw)
    method.net = UnigramNet(q)
    return method


def iid_tokens(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.multinomial(P, n * length, replacement=True, generator=gen(seed)).view(n, length)


# ------------------------------------------------------------------ forward process


@pytest.mark.parametrize("schedule", [LogLinearSchedule(), CosineSchedule()])
def test_schedule_endpoints_and_weight(schedule):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    assert float(schedule.alpha(torch.tensor(0.0))) == 1.0 and float(schedule.alpha(torch.tensor(1.0))) < 1e-15
    h = 1e-6
    finite_diff = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.dalpha(t), finite_diff, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(schedule.one_minus_alpha(t), 1 - schedule.alpha(t))
    torch.testing.assert_close(schedule.weight(t), -finite_diff / (1 - schedule.alpha(t)), rtol=1e-6, atol=0)
    if isinstance(schedule, LogLinearSchedule):
        torch.testing.assert_close(schedule.weight(t), 1 / t)  # MDLM's 1/t weighting


def test_unknown_schedule_is_one_line_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'cosin'; valid: loglinear, cosine"):
        get_schedule("cosin")


def test_stratified_times_one_per_stratum_in_open_unit_interval():
    t = stratified_times((200, 8), gen())
    assert t.shape == (200, 8) and (t > 0).all() and (t <= 1).all()
    stratum = torch.ceil(t * 8) - 1  # t in (k/8, (k+1)/8]  ->  k
    assert torch.equal(stratum, torch.arange(8, dtype=torch.float64).expand(200, 8))
    # within its stratum each time is uniform: mean offset 1/16
    assert float((t - stratum / 8).mean()) == pytest.approx(1 / 16, abs=0.002)


@pytest.mark.parametrize("schedule", [LogLinearSchedule(), CosineSchedule()])
def test_forward_masking_rate_is_one_minus_alpha(schedule):
    n, length, mask_id = 4000, 32, V
    x = iid_tokens(n, length)
    times = torch.tensor([1e-9, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    t = times.repeat_interleave(n // len(times))
    z, masked = mask_tokens(x, t, schedule, mask_id, gen(1))
    assert torch.equal(z[masked], torch.full_like(z[masked], mask_id))  # masked -> [MASK]
    assert torch.equal(z[~masked], x[~masked])  # the rest untouched
    rate = masked.view(len(times), -1).double().mean(1)
    expected = schedule.one_minus_alpha(times)
    count = n // len(times) * length
    se = (expected * (1 - expected) / count).sqrt()
    assert (rate - expected).abs().le(5 * se + 1e-12).all(), (rate, expected)
    assert rate[0] == 0 and rate[-1] == 1  # nothing masked at t ~ 0, everything at t = 1


# ------------------------------------------------------------------ SUBS


def test_subs_zero_masking_and_carry_over():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, V) * 3
    z = torch.randint(0, V, (3, 6))
    z[:, ::2] = V  # mask every other position
    lp = subs_log_probs(logits, z, mask_id=V)
    probs = lp.exp()
    assert lp.shape == (3, 6, V + 1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 6))
    assert (probs[..., V] == 0).all()  # [MASK] never predicted
    unmasked = z != V
    assert torch.equal(probs[unmasked], nn.functional.one_hot(z[unmasked], V + 1).float())  # copied exactly
    torch.testing.assert_close(probs[~unmasked][:, :V], logits.softmax(-1)[~unmasked])
    with pytest.raises(ValueError, match="logits have 5 classes but the data vocabulary is 7"):
        subs_log_probs(logits, z, mask_id=7)


def test_method_denoiser_is_subs():
    torch.manual_seed(0)
    method = MDLM(text_spec(12), model_size="tiny")
    z = torch.randint(0, V, (4, 12))
    z[torch.rand(4, 12) < 0.5] = V
    with torch.no_grad():
        probs = method._log_probs(z, torch.full((4,), 0.5)).exp()
    assert (probs[..., V] == 0).all()
    keep = z != V
    assert (probs[keep].gather(-1, z[keep][:, None]) == 1).all()


# ------------------------------------------------------------------ the NELBO


def _exact_mask_expectation(x: torch.Tensor, t: float, schedule: NoiseSchedule, q: torch.Tensor) -> torch.Tensor:
    """E over every mask pattern of the one-sample NELBO at time t (enumerated)."""
    n, length = x.shape
    lp = subs_log_probs(q.log().expand(n, length, -1), torch.full_like(x, V), V)  # masked-position predictions
    a = float(schedule.alpha(torch.tensor(t, dtype=torch.float64)))
    total = torch.zeros(n, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    for pattern in itertools.product([False, True], repeat=length):
        masked = torch.tensor(pattern).expand(n, length)
        k = sum(pattern)
        total += (1 - a) ** k * a ** (length - k) * masked_nelbo(lp, x, masked, tt, schedule)
    return total


def test_nelbo_is_exact_in_expectation_for_factorised_data():
    x = iid_tokens(6, 4)
    exact = -P.log()[x].sum(1)
    # log-linear: the weight 1/t times the mask rate t is 1 — exact at every single t
    for t in (0.03, 0.4, 1.0):
        torch.testing.assert_close(_exact_mask_expectation(x, t, LogLinearSchedule(), P), exact, rtol=1e-12, atol=1e-12)
    # cosine: exact after integrating over t (Gauss-Legendre, 40 nodes)
    nodes, weights = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(40))
    integral = sum(
        w / 2 * _exact_mask_expectation(x, float((s + 1) / 2), CosineSchedule(), P) for s, w in zip(nodes, weights)
    )
    torch.testing.assert_close(integral, exact, rtol=1e-9, atol=1e-9)
    # a wrong factorised denoiser q pays exactly sum_l log p(x_l)/q(x_l) more
    q = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2], dtype=torch.float64)
    torch.testing.assert_close(_exact_mask_expectation(x, 0.3, LogLinearSchedule(), q), -q.log()[x].sum(1))


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_nelbo_estimate_equals_log_likelihood_and_bounds_it(schedule):
    n, length = 3000, 16
    x = iid_tokens(n, length, seed=2)
    exact = -P.log()[x].sum(1)  # nats per sequence
    est = -unigram_mdlm(length, schedule=schedule, likelihood_samples=8).log_likelihood(x, gen(3)).double()
    err = est - exact
    se = float(err.std() / math.sqrt(n))
    assert abs(float(err.mean())) < 4 * se, (float(err.mean()), se)
    assert se < 0.01 * float(exact.mean())  # and the check is tight: < 1% of the value
    # wrong denoiser: a bound, looser by L * KL(p || q) per sequence on average
    q = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3], dtype=torch.float64)
    wrong = -unigram_mdlm(length, q=q, schedule=schedule, likelihood_samples=8).log_likelihood(x, gen(3)).double()
    gap = wrong - exact
    kl = float((P * (P / q).log()).sum())
    assert float(gap.mean()) > 10 * float(gap.std() / math.sqrt(n))  # strictly larger, far beyond noise
    expected_gap = float((-q.log()[x].sum(1) - exact).mean())  # L*KL up to the sampling of x
    assert float(gap.mean()) == pytest.approx(expected_gap, abs=5 * float(gap.std() / math.sqrt(n)))
    assert expected_gap == pytest.approx(length * kl, rel=0.1)


def test_nelbo_is_tight_for_the_exact_denoiser_of_a_markov_source():
    # With exact conditionals the NELBO is an average over unmasking orders of exact
    # chain-rule decompositions, so it equals -log p(x) (dependent tokens this time).
    n, length = 2000, 8
    x = markov_sample(n, length, seed=1)
    exact = -markov_log_prob(x)
    err = -markov_mdlm(length, likelihood_samples=8).log_likelihood(x, gen(2)).double() - exact
    se = float(err.std() / math.sqrt(n))
    assert abs(float(err.mean())) < 4 * se and se < 0.01 * float(exact.mean()), (float(err.mean()), se)


def test_training_loss_is_per_token_nelbo():
    length = 16
    method = unigram_mdlm(length)
    x = iid_tokens(512, length)
    torch.manual_seed(5)
    loss = method.training_step("nelbo", x, 0)["adam"]
    torch.manual_seed(5)  # the same draws, by hand: per-sequence NELBO / tokens
    t = method.t_min + (1 - method.t_min) * stratified_times((512,))
    z, masked = mask_tokens(x, t, method.schedule, V)
    by_hand = masked_nelbo(subs_log_probs(method.net(z), z, V), x, masked, t, method.schedule).sum() / x.numel()
    torch.testing.assert_close(loss.double(), by_hand)
    # and its expectation is the per-token entropy H(p) for the unigram denoiser
    entropy = float(-(P * P.log()).sum())
    assert float(loss) == pytest.approx(entropy, rel=0.15)


def record_training_times(method: MDLM) -> list[torch.Tensor]:
    """Make ``method`` record the times its training steps draw (one tensor per step)."""
    seen, nelbo = [], method.nelbo

    def spy(x, t, generator=None):
        seen.append(t.detach().clone())
        return nelbo(x, t, generator)

    method.nelbo = spy
    return seen


def test_training_times_are_stratified_over_the_floored_interval():
    """t = t_min + (1 - t_min) u, u MDLM's stratified draw: one time per stratum of [t_min, 1]."""
    batch, steps, length = 64, 100, 8
    x = iid_tokens(batch, length)
    times = {}
    for t_min in (0.0, 1e-3, 0.2):
        method = unigram_mdlm(length, t_min=t_min)
        seen = record_training_times(method)
        torch.manual_seed(11)
        for step in range(steps):
            method.training_step("nelbo", x, step)
        t = torch.stack(seen)  # (steps, batch)
        lo = t_min + (1 - t_min) * torch.arange(batch, dtype=torch.float64) / batch
        assert bool((t >= lo).all() and (t <= lo + (1 - t_min) / batch + 1e-12).all()), t_min
        times[t_min] = t
    # the same seed gives the same stratified draw, mapped onto [t_min, 1]
    torch.testing.assert_close(times[1e-3], 1e-3 + (1 - 1e-3) * times[0.0], rtol=0, atol=1e-15)
    assert float(times[0.0].min()) < 1e-3  # without the floor, 1/t reaches past 1000


def loss_variance_given_times(t: torch.Tensor, per_token_loss: torch.Tensor) -> torch.Tensor:
    """Var(loss | t) of MDLM's per-token training loss for a denoiser that ignores its input.

    Token l of row k is masked with probability t_k and then costs c_kl / t_k (loglinear
    weight 1/t), so loss = sum_kl m_kl c_kl / (t_k B L) with m_kl ~ Bernoulli(t_k):
    Var(loss | t) = sum_k (1 - t_k) / t_k * sum_l c_kl^2 / (B L)^2. Its mean over t *is* the
    loss variance over steps, because E[loss | t] = sum c / (B L) does not depend on t.
    """
    b, length = per_token_loss.shape
    return ((1 - t) / t * per_token_loss.pow(2).sum(-1)).sum(-1) / (b * length) ** 2


def test_time_floor_makes_the_training_loss_variance_finite():
    """The per-batch loss variance: infinite for t in (0, 1], finite with the floor (as the paper's code).

    For a fixed network that ignores its input (the unigram denoiser) and a fixed batch the
    variance over steps is E_t[Var(loss | t)], in closed form: row k's time is uniform on
    [a_k, b_k], where E[(1 - t) / t] = log(b_k / a_k) / (b_k - a_k) - 1, infinite for a_0 = 0.
    The times are the ones training_step draws (same seeds for both floors); averaging the
    exact Var(loss | t) over them is the Rao-Blackwellised variance estimate. The raw sample
    variance of the losses is not used: without the floor it has no finite mean, and over a
    few thousand steps its value swings with the seed (the floor's gain is log(1/t_min)
    against the log of the number of steps, not orders of magnitude).
    """
    batch, length, steps = 8, 16, 3000
    x = iid_tokens(batch, length, seed=3)
    per_token = -P.log()[x]  # c_kl: the unigram denoiser's loss of each token when masked

    def closed_form(t_min: float) -> float:
        a = t_min + (1 - t_min) * torch.arange(batch, dtype=torch.float64) / batch
        b = a + (1 - t_min) / batch
        mean_weight = torch.where(a > 0, torch.log(b / a) / (b - a) - 1, torch.tensor(math.inf, dtype=torch.float64))
        return float((mean_weight * per_token.pow(2).sum(-1)).sum()) / (batch * length) ** 2

    estimates = {}
    for t_min in (0.0, 1e-3):
        method = unigram_mdlm(length, t_min=t_min)
        seen = record_training_times(method)
        torch.manual_seed(21)
        for step in range(steps):
            method.training_step("nelbo", x, step)
        estimates[t_min] = loss_variance_given_times(torch.stack(seen), per_token)
    floored, unfloored = estimates[1e-3], estimates[0.0]
    se = float(floored.std()) / math.sqrt(steps)
    assert abs(float(floored.mean()) - closed_form(1e-3)) < 4 * se, (float(floored.mean()), closed_form(1e-3), se)
    assert math.isinf(closed_form(0.0))
    # the same draws without the floor: every step's conditional variance is larger, the worst
    # step's by far more than the floor allows (1/t is capped at 1000 with it)
    assert bool((unfloored > floored).all())
    assert float(unfloored.max()) > 2 * float(floored.max())
    assert float(unfloored.mean()) > float(floored.mean())


# ------------------------------------------------------------------ the sampler


def test_sampler_with_unigram_denoiser_draws_p_and_no_mask():
    n, length = 2000, 16
    method = unigram_mdlm(length)
    out = method.sample(n, "ancestral", 8, gen(4))
    assert out.shape == (n, length) and out.dtype == torch.long
    assert method.sampling_precision == "float64"  # what the host records beside sample metrics
    assert (out >= 0).all() and (out < V).all()  # no [MASK] left
    freq = torch.bincount(out.flatten(), minlength=V).double() / out.numel()
    se = (P * (1 - P) / out.numel()).sqrt()
    assert ((freq - P).abs() < 5 * se).all(), (freq, P)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_reverse_steps_retrace_the_forward_marginals(schedule):
    # Each step unmasks with probability (alpha_s - alpha_t) / (1 - alpha_t), so at the
    # k-th network call (time t_k = 1 - k / nfe) a share 1 - alpha(t_k) is still masked.
    n, length, nfe = 400, 16, 10
    method = unigram_mdlm(length, schedule=schedule, cache=False)
    seen = []
    forward = method.net.forward
    method.net.forward = lambda z: (seen.append(float((z == V).double().mean())), forward(z))[1]
    method.sample(n, "ancestral", nfe, gen(8))
    times = torch.linspace(1, 0, nfe + 1, dtype=torch.float64)[:-1]
    expected = method.schedule.one_minus_alpha(times)
    se = (expected * (1 - expected) / (n * length)).sqrt()
    assert ((torch.tensor(seen, dtype=torch.float64) - expected).abs() <= 5 * se + 1e-12).all(), (seen, expected)


def test_exact_denoiser_samples_the_source_and_fewer_steps_loosen_samples():
    # Many steps unmask about one token at a time, i.e. exact chain-rule sampling in a
    # random order; one step draws every token independently from its marginal, which
    # takes the rare transitions often (the paper's "fewer steps loosen samples").
    n, length = 2000, 8
    method = markov_mdlm(length)
    rare, nll = {}, {}
    for nfe in (1, 4, 256):
        out = method.sample(n, "ancestral", nfe, gen(nfe))
        rare[nfe] = float((T[out[:, :-1], out[:, 1:]] < 0.01).double().mean())
        nll[nfe] = -markov_log_prob(out)
    assert rare[1] > rare[4] > rare[256] and rare[1] > 0.2
    assert float(nll[1].mean()) > float(nll[4].mean()) > float(nll[256].mean())
    reference = markov_sample(n, length, seed=3)
    real_nll = -markov_log_prob(reference)
    se = math.sqrt(float(nll[256].var() + real_nll.var()) / n)
    assert float(nll[256].mean() - real_nll.mean()) == pytest.approx(0.0, abs=4 * se)
    first = torch.bincount(out[:, 0], minlength=len(PI)).double() / n
    assert ((first - PI).abs() < 5 * (PI * (1 - PI) / n).sqrt()).all()
    assert rare[256] == pytest.approx(float((T[reference[:, :-1], reference[:, 1:]] < 0.01).double().mean()), abs=0.01)


def test_nfe_sets_network_calls_and_caching_is_exact():
    length = 16
    counts = {}
    for cache in (False, True):
        for nfe in (2, 8, 64):
            # the exact Markov denoiser depends on each row's context: a cache that
            # mixed up rows or reused a stale prediction would change the samples
            method = markov_mdlm(length, cache=cache)
            samples = method.sample(50, "ancestral", nfe, gen(6))
            counts[cache, nfe] = (method.net.calls, method.last_sampling["evals_per_sample"], samples)
    for nfe in (2, 8, 64):
        calls, evals, plain = counts[False, nfe]
        assert calls == nfe and evals == nfe  # without the cache: one call per step
        cached_calls, cached_evals, cached = counts[True, nfe]
        assert torch.equal(cached, plain)  # skipping unchanged sequences changes nothing
        assert cached_calls <= nfe and cached_evals <= min(nfe, length)  # no call once nothing is masked
    assert counts[True, 2][0] < counts[True, 8][0] < counts[True, 64][0]
    assert counts[True, 64][1] < 64 / 2  # at many steps most steps change nothing


def test_time_conditioned_network_sees_t_and_is_never_cached():
    torch.manual_seed(0)
    method = MDLM(text_spec(12), model_size="tiny", time_conditioning=True)
    z = torch.full((2, 12), V)
    with torch.no_grad():
        early, late = method._log_probs(z, torch.full((2,), 0.1)), method._log_probs(z, torch.full((2,), 0.9))
    assert not torch.allclose(early, late)  # the same input at two times: t reaches the network
    calls = []
    forward = method.net.forward
    method.net.forward = lambda z, t: (calls.append(float(t[0])), forward(z, t))[1]
    method.sample(4, "ancestral", 6, gen())
    assert calls == pytest.approx([1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])  # every step, at its own time
    assert torch.isfinite(method.training_step("nelbo", iid_tokens(8, 12), 0)["adam"])


def test_leftover_masks_are_filled_from_the_denoiser():
    class StopsShort(LogLinearSchedule):  # alpha_0 = 0.5: half the tokens still masked at t = 0
        def alpha(self, t):
            return 0.5 * (1.0 - t)

        def one_minus_alpha(self, t):
            return 1.0 - self.alpha(t)

    method = unigram_mdlm(8, schedule=StopsShort(), cache=False)
    out = method.sample(300, "ancestral", 4, gen(7))
    assert (out < V).all() and method.net.calls == 5  # 4 steps + the filling call


# ------------------------------------------------------------------ the discrete-time bound


@pytest.mark.parametrize("schedule", [LogLinearSchedule(), CosineSchedule()])
def test_discrete_weight_and_step_times(schedule):
    steps = 10
    u = torch.rand(20000, generator=gen(1), dtype=torch.float64).clamp(min=1e-12)
    t = snap_to_steps(u, steps)
    counts = torch.bincount((t * steps).round().long(), minlength=steps + 1)
    assert counts[0] == 0 and (counts[1:] - 2000).abs().max() < 5 * math.sqrt(2000)  # i uniform on 1..T
    torch.testing.assert_close(t * steps, (t * steps).round())
    grid = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    by_hand = steps * (schedule.alpha(grid - 1 / steps) - schedule.alpha(grid)) / (1 - schedule.alpha(grid))
    torch.testing.assert_close(discrete_weight(schedule, grid, steps), by_hand)
    if isinstance(schedule, LogLinearSchedule):
        torch.testing.assert_close(discrete_weight(schedule, grid, steps), 1 / grid)  # the continuous weight at t_i
    assert snap_to_steps(u, None) is u


def test_one_step_bound_is_the_marginals_code_length():
    # T = 1: t = 1, every token masked, weight 1: the bound is -sum_l log p(x_l) under the
    # exact denoiser's all-masked prediction, the stationary marginal (exact, no Monte Carlo)
    x = markov_sample(50, 6, seed=4)
    method = markov_mdlm(6)
    bound = -method.log_likelihood_steps(x, gen(1), steps=1)
    torch.testing.assert_close(bound, -PI.log()[x].sum(1), rtol=1e-6, atol=1e-6)  # float32 network outputs
    assert float(bound.mean()) > float(-markov_log_prob(x).mean())  # looser than -log p(x) on average


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_likelihood_steps_is_exact_for_the_unigram_denoiser_at_every_step_count(schedule):
    # for i.i.d. tokens and the true unigram denoiser a token is masked at t_i with probability
    # 1 - alpha(t_i) and costs H; the T-step weight T (alpha(t_i - 1/T) - alpha(t_i)) / (1 - alpha(t_i))
    # over t_i uniform on the grid sums to (alpha(0) - alpha(1)) L H = L H for any schedule, so
    # every T-step bound equals -log p(x) in expectation (as the continuous one): this checks
    # the discrete weight independently of its formula, the cosine schedule's included
    n, length = 3000, 8
    x = iid_tokens(n, length, seed=5)
    exact = -P.log()[x].sum(1)
    method = unigram_mdlm(length, schedule=schedule)
    for steps in (1, 3, 100):
        err = -method.log_likelihood_steps(x, gen(6), steps=steps) - exact
        se = float(err.std() / math.sqrt(n))
        assert abs(float(err.mean())) < 4 * se + 1e-5, (steps, float(err.mean()), se)  # T = 1: no noise at all


def test_fewer_steps_loosen_the_bound_of_a_markov_source():
    # MDLM Sec. 3.2 / BD3-LM: the T-step bound decreases towards the continuous one as T
    # grows; with the exact denoiser the continuous bound is -log p(x). Common draws (equal
    # generator seeds) make the differences paired.
    n, length = 1000, 8
    x = markov_sample(n, length, seed=7)
    method = markov_mdlm(length)
    bounds = {s: -method.log_likelihood_steps(x, gen(8), steps=s, samples=2) for s in (2, 10, 100, None)}
    for loose, tight in ((2, 10), (10, 100)):
        diff = bounds[loose] - bounds[tight]
        assert float(diff.mean()) > 3 * float(diff.std() / math.sqrt(n)), (loose, tight, float(diff.mean()))
    # (T = 100 against continuous time differ by ~0.1 nats here, below the continuous
    # estimator's noise: its weight 1/t is unbounded near t = 0, the T-step one stops at T)
    err = bounds[None] - (-markov_log_prob(x))
    assert abs(float(err.mean())) < 4 * float(err.std() / math.sqrt(n))


def test_likelihood_steps_metric_records_every_step_count_and_skips_others():
    from gmbench.metrics.base import MetricSkipped
    from gmbench.plugins import Registries
    from gmbench_methods.discrete_diffusion.ar import AR

    assert isinstance(Registries().metrics.get("likelihood_steps"), DiscreteTimeBound)
    data = SyntheticLanguage(seq_len=8, n_train=50, n_test=300)
    # a stand-in model whose T-step bound is T nats per sequence (continuous: 0): the metric
    # must report each under its own name, in bits per character of the test split
    model = unigram_mdlm(8, q=torch.full((27,), 1 / 27, dtype=torch.float64))
    model.log_likelihood_steps = lambda x, g, steps=None, samples=None: torch.full(
        (x.shape[0],), -float(steps or 0), dtype=torch.float64)
    metric = DiscreteTimeBound()
    metric.batch_size = 128  # three batches: the totals run over all of them
    ctx = EvalContext(dataset=data, n_samples=0, seed=0)
    values = metric.score_model(model, ctx)
    assert values == pytest.approx({f"test_bpc_T{s}": s / (8 * math.log(2)) for s in (10, 100, 1000)} | {"test_bpc_Tinf": 0.0})
    assert [o.name for o in metric.outputs] == list(values)
    with pytest.raises(MetricSkipped, match="no discrete-time diffusion bound"):
        metric.score_model(AR(data.spec(), model_size="tiny"), ctx)
    # a real mdlm: the continuous column agrees with its likelihood on the same windows
    real = markov_mdlm(8)
    torch.manual_seed(0)
    x = markov_sample(300, 8, seed=9)
    real_values = DiscreteTimeBound.score_model(metric, real, EvalContext(dataset=_Fixed(data, x), n_samples=0, seed=0))
    exact_bits = float(-markov_log_prob(x).mean()) / (8 * math.log(2))
    assert real_values["test_bpc_T10"] > real_values["test_bpc_T1000"]
    assert real_values["test_bpc_Tinf"] == pytest.approx(exact_bits, abs=0.15)


class _Fixed:
    """A dataset stand-in whose test split is ``x`` (token ids of the Markov source)."""

    def __init__(self, data, x):
        self.data, self.x = data, x

    def spec(self):
        return self.data.spec()

    def split(self, name):
        from gmbench.data.base import Split

        return Split(self.x)


def test_log_likelihood_is_the_continuous_bound_of_log_likelihood_steps():
    method = markov_mdlm(8)
    x = markov_sample(20, 8, seed=2)
    assert torch.equal(method.log_likelihood(x, gen(3)), method.log_likelihood_steps(x, gen(3), steps=None))


# ------------------------------------------------------------------ determinism and errors


def test_deterministic_given_the_generator():
    torch.manual_seed(0)
    method = MDLM(text_spec(12), model_size="tiny").to("cpu")
    method.train(False)
    x = iid_tokens(20, 12)
    a, b, c = (method.sample(8, "ancestral", 5, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    la, lb, lc = (method.log_likelihood(x, gen(s)) for s in (1, 1, 2))
    assert la.shape == (20,) and torch.equal(la, lb) and not torch.equal(la, lc)
    assert (la < 0).all()


def test_bad_input_gives_one_line_errors():
    method = unigram_mdlm(8)
    with pytest.raises(MethodError, match="no sampler 'ancestal'"):
        method.sample(2, "ancestal", 4, gen())
    with pytest.raises(MethodError, match="need nfe >= 1"):
        method.sample(2, "ancestral", 0, gen())
    with pytest.raises(MethodError, match=r"token ids must lie in 0\.\.4"):
        method.log_likelihood(torch.full((2, 8), V), gen())
    with pytest.raises(MethodError, match=r"shape \(N, 8\)"):
        method.log_likelihood(torch.zeros(2, 9, dtype=torch.long), gen())
    with pytest.raises(MethodError, match="does not support 'toy2d'"):
        MDLM(DataSpec(name="t", modality="toy2d", shape=(2,)))
    for t_min in (-0.1, 1.0):
        with pytest.raises(MethodError, match=r"t_min must be in \[0, 1\)"):
            MDLM(text_spec(8), model_size="tiny", t_min=t_min)


# ------------------------------------------------------------------ it learns, through the host


def test_registered_through_the_entry_point():
    from gmbench.plugins import Registries

    assert Registries().methods.get("mdlm") is MDLM


def test_learns_synthlang_beyond_uniform_and_unigram_baselines():
    # Windows of 16 characters, trained on the whole smoke budget (~900 steps, ~8 s).
    # At the default 64 the tiny transformer (learned absolute positions) needs ~400
    # steps, twice what smoke buys, to leave the unigram plateau: a masked position
    # sees its neighbours only through attention, which must first learn where they are.
    data = SyntheticLanguage(seq_len=16, n_train=4000, n_test=500)
    budget = SMOKE
    torch.manual_seed(0)
    method = MDLM(data.spec(), model_size=budget.model_size)
    reports = train(method, data.split("train").x, budget, "text", gen(0))
    assert reports[0].steps > 500
    bpc = HeldOutLikelihood().score_model(method, EvalContext(dataset=data, n_samples=0, seed=0))["test_bpc"]
    counts = torch.bincount(data.split("train").x.flatten(), minlength=27).double()
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * p[p > 0].log2()).sum())
    assert unigram < math.log2(27)
    assert bpc < unigram - 1.0, (bpc, unigram)  # measured: 2.83 against 4.51
    test_x = data.split("test").x
    true_bits = float(-data.log_prob(test_x).mean() / (test_x.shape[1] * math.log(2)))
    assert bpc > true_bits - 0.05  # a bound cannot beat the source's exact NLL (up to MC noise)


class TestMDLMConforms(MethodConformance):
    """The shared contract suite (shapes, budget, determinism, checkpoints)."""

    method = MDLM
    load_entrypoints = False
