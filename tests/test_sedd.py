"""Tests for the `sedd` plugin (Lou, Meng & Ermon, arXiv 2310.16834).

Closed forms checked: ``exp(sigma Q)`` (and ``exp(-sigma Q)``) of both graphs is the
keep-or-jump matrix ``M(e^{-sigma})`` and the log-linear schedule's ``sigma`` is the
derivative of its ``sigmabar``; the denoising score entropy against the definition written
out position by position (and one value by hand); on a 3-token vocabulary and length 2,
with every ``x_t`` enumerated and the time integral by quadrature, the bound of the exact
score of factorised data is ``-log p_0(x_0)`` plus the prior mismatch
``E log p_1(x_1) / pi(x_1)`` by hand (0 for absorbing); the Monte Carlo likelihood and the
training loss agree with the same quantities; the Tweedie sampler draws ``p_0`` exactly in
one step while one Euler step does not (uniform graph); both learn synthlang at smoke.
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
from gmbench_methods.discrete_diffusion.sedd import SEDD, LogLinearNoise, score_entropy
from gmbench_methods.discrete_diffusion.transitions import KeepOrJump

V, L = 3, 2
P0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spec(length: int = L, vocab: int = V) -> DataSpec:
    return DataSpec(name="hand", modality="text", shape=(length,), vocab_size=vocab)


def all_sequences(k: int, length: int = L) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(k), repeat=length)), dtype=torch.long)


class ConstantNet(nn.Module):
    """Outputs the same logits at every position and time; counts calls."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits.float())
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return self.logits.expand(*x.shape, -1)


class ExactUniformScore(nn.Module):
    """The exact score of i.i.d. tokens ``~ p0`` under the uniform graph:
    ``log p_t(y) - log p_t(x^i)``, ``p_t = a(t) p0 + (1 - a(t)) / V``."""

    def __init__(self, p0: torch.Tensor, eps: float):
        super().__init__()
        self.p0, self.eps, self.calls = p0, eps, 0

    def forward(self, x, t):
        self.calls += 1
        a = (1.0 - (1.0 - self.eps) * t.double())[:, None, None]
        log_pt = (a * self.p0 + (1.0 - a) / len(self.p0)).log()  # (N, 1, V)
        return (log_pt - log_pt.expand(*x.shape, -1).gather(-1, x[..., None])).float()


class TableNet(nn.Module):
    """Length-2 model with arbitrary outputs depending on both tokens and on t: ``table[x_0, x_1]``
    times ``1 + t``, or times ``1 - t`` (``fade=True``: log-scores -> 0 at t = 1, as a trained
    uniform-graph model's, whose integrand otherwise peaks at sigma(1) = 1 / eps)."""

    def __init__(self, table: torch.Tensor, fade: bool = False):
        super().__init__()
        self.register_buffer("table", table.float())
        self.fade = fade

    def forward(self, x, t):
        t = t.float()[:, None, None]
        return self.table[x[:, 0], x[:, 1]] * ((1.0 - t) if self.fade else (1.0 + t))


def method_with(net: nn.Module, graph: str = "absorbing", **kw) -> SEDD:
    torch.manual_seed(0)
    method = SEDD(spec(), model_size="tiny", graph=graph, **kw)
    method.net = net
    return method


def exact_score_net(graph: str) -> nn.Module:
    if graph == "absorbing":  # s_y = p0(y) a / (1 - a) after the method's scale by sigma
        return ConstantNet(P0.log() + math.log(V))
    return ExactUniformScore(P0, 1e-3)


# ------------------------------------------------------------------ graphs and noise


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_transition_is_the_exponential_of_the_rate_matrix(graph):
    trans = KeepOrJump(graph, V)
    q = trans.rate_matrix()
    off = q[~torch.eye(trans.num_states, dtype=torch.bool)]
    assert (off >= 0).all() and torch.allclose(q.sum(1), torch.zeros(trans.num_states, dtype=torch.float64))
    for sigma in (0.01, 0.7, 5.0):
        forward = torch.linalg.matrix_exp(sigma * q)
        torch.testing.assert_close(forward, trans.matrix(math.exp(-sigma)), atol=1e-12, rtol=0)
        torch.testing.assert_close(torch.linalg.matrix_exp(-sigma * q), trans.matrix(math.exp(sigma)),
                                   atol=1e-9, rtol=1e-12)
        assert torch.allclose(forward.sum(1), torch.ones(trans.num_states, dtype=torch.float64))


def test_loglinear_noise():
    for eps in (0.0, 1e-3):
        noise = LogLinearNoise(eps)
        t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
        h = 1e-6
        derivative = (noise.total(t + h) - noise.total(t - h)) / (2 * h)
        torch.testing.assert_close(noise.rate(t), derivative, rtol=1e-6, atol=0)
        torch.testing.assert_close(noise.keep(t), torch.exp(-noise.total(t)), rtol=1e-12, atol=0)
        torch.testing.assert_close(noise.total(t), -torch.log(1 - (1 - eps) * t))
        assert float(noise.total(torch.tensor(0.0, dtype=torch.float64))) == 0.0
    assert float(LogLinearNoise(0.0).keep(torch.tensor(1.0))) == 0.0  # t = 1: every token jumped


# ------------------------------------------------------------------ score entropy


def test_score_entropy_by_hand():
    # absorbing, a masked position with clean token 1 at keep probability a = 0.5: the ratio
    # r_y = p(y | x0) / p(mask | x0) is 1 for y = 1 and 0 otherwise, so with scores (0.2, 0.9, 0.4)
    # l = (0.2 + 0.9 + 0.4) - 1 * log 0.9 + K(1) = 1.5 - log 0.9 - 1.
    trans = KeepOrJump("absorbing", V)
    log_s = torch.tensor([[[0.2, 0.9, 0.4, 1.0]]], dtype=torch.float64).log()
    got = score_entropy(trans, log_s, torch.tensor([[V]]), torch.tensor([[1]]), torch.tensor([0.5]))
    assert float(got) == pytest.approx(0.5 - math.log(0.9), abs=1e-12)
    # unmasked positions carry no loss (no rate into a data token)
    assert float(score_entropy(trans, log_s, torch.tensor([[1]]), torch.tensor([[1]]), torch.tensor([0.5]))) == 0.0


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_score_entropy_matches_its_definition_and_vanishes_at_the_true_ratios(graph):
    trans = KeepOrJump(graph, V)
    k = trans.num_states
    q = trans.rate_matrix()
    g = gen(3)
    for a in (0.9, 0.3, 0.02):
        p = torch.linalg.matrix_exp(-math.log(a) * q)  # p_{t|0}(y | x0) = p[x0, y]
        for x0, x in itertools.product(range(V), range(k)):
            if p[x0, x] == 0:
                continue
            log_s = torch.randn(1, 1, k, generator=g, dtype=torch.float64)
            log_s[..., x] = 0.0
            by_definition = 0.0
            for y in range(k):
                if y == x or q[y, x] == 0:
                    continue
                r = float(p[x0, y] / p[x0, x])
                s = float(log_s[0, 0, y].exp())
                by_definition += float(q[y, x]) * (s - r * math.log(s) + (r * (math.log(r) - 1) if r > 0 else 0.0))
            keep = torch.tensor([a], dtype=torch.float64)
            got = score_entropy(trans, log_s, torch.tensor([[x]]), torch.tensor([[x0]]), keep)
            assert float(got) == pytest.approx(by_definition, abs=1e-12), (a, x0, x)
            # at the true ratios the loss is 0 (and it is never negative)
            true = (p[x0] / p[x0, x]).clamp_min(1e-300).log().reshape(1, 1, k)
            zero = score_entropy(trans, true, torch.tensor([[x]]), torch.tensor([[x0]]), keep)
            assert abs(float(zero)) < 1e-9 and float(got) >= 0


# ------------------------------------------------------------------ the bound


def exact_bound(method: SEDD, x0: torch.Tensor, nodes: int = 120) -> torch.Tensor:
    """The bound with ``x_t`` enumerated and ``int_0^1 dt`` by Gauss-Legendre in ``u``, ``t = u^3``
    (the integrand has a log singularity at ``t = 0`` for the uniform graph)."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    u = torch.tensor((u + 1) / 2, dtype=torch.float64)
    w = torch.tensor(w / 2, dtype=torch.float64) * 3 * u**2
    t = u**3
    states = all_sequences(method.trans.num_states, x0.shape[1])
    n, m = x0.shape[0], states.shape[0]
    tt = t.repeat_interleave(n * m)
    x0s = x0.repeat_interleave(m, 0).repeat(nodes, 1)
    x_t = states.repeat(n, 1).repeat(nodes, 1)
    weight = method.trans.probs(x0s, method.noise.keep(tt)).gather(-1, x_t[..., None]).squeeze(-1).prod(-1)
    with torch.no_grad():
        f = method.weighted_score_entropy(method.log_score(x_t, tt), x_t, x0s, tt)
    f = torch.where(weight > 0, f, torch.zeros_like(f))
    return (w[:, None] * (weight * f).view(nodes, n, m).sum(-1)).sum(0) + method.prior_term(x0)


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_bound_of_the_exact_score_is_minus_log_p0_plus_the_prior_mismatch(graph):
    # With the exact score the reverse process started from p_1 reproduces p_0 and the bound is
    # tight; started from p_base = pi it pays E_{p_{1|0}} log(p_1 / pi) per token, by hand.
    method = method_with(exact_score_net(graph), graph)
    x0 = all_sequences(V)
    a1, pi = float(method.noise.keep(torch.tensor(1.0))), method.trans.pi
    p1 = a1 * torch.cat([P0, torch.zeros(method.trans.num_states - V, dtype=torch.float64)]) + (1 - a1) * pi
    mismatch = torch.stack([(q * torch.where(q > 0, p1.log() - pi.log(), torch.zeros_like(q))).sum()
                            for q in method.trans.probs(torch.arange(V), a1)])
    by_hand = (-P0.log()[x0] + mismatch[x0]).sum(1)
    got = exact_bound(method, x0)
    torch.testing.assert_close(got, by_hand, atol=2e-5, rtol=0)  # float32 time input of the net
    if graph == "absorbing":
        assert float(mismatch.abs().max()) == 0.0
    else:
        assert 0 < float(mismatch.max()) < 1e-5


# a dependent law on V = 3 tokens x L = 2 positions: the tokens agree more often than not
JOINT = torch.tensor([[0.30, 0.02, 0.03], [0.02, 0.25, 0.03], [0.05, 0.05, 0.25]], dtype=torch.float64)


class ExactJointAbsorbingScore(nn.Module):
    """The exact absorbing-graph score of ``JOINT``: at a masked position, the conditional law of
    its token given the other position (its marginal when that one is masked too), in the
    network's output convention (``log p + log V``, as ``exact_score_net`` for i.i.d. tokens)."""

    def __init__(self):
        super().__init__()
        table = torch.zeros(V + 1, V + 1, L, V, dtype=torch.float64)  # [x_0, x_1, position, y]
        for a, b in itertools.product(range(V + 1), repeat=2):
            table[a, b, 0] = (JOINT[:, b] / JOINT[:, b].sum() if b < V else JOINT.sum(1)).log()
            table[a, b, 1] = (JOINT[a] / JOINT[a].sum() if a < V else JOINT.sum(0)).log()
        self.register_buffer("table", table + math.log(V))

    def forward(self, x, t):
        return self.table[x[:, 0], x[:, 1]].float()


def test_bound_of_the_exact_score_of_a_dependent_law_is_its_nll():
    """The i.i.d. cases above cannot see how context enters the score; on a law whose tokens
    depend on each other the exact (context-dependent) score still gives -log p(x) for every
    sequence, and a perturbed score gives a bound above it on average (the entropy)."""
    net = ExactJointAbsorbingScore()
    method = method_with(net, "absorbing")
    x0 = all_sequences(V)
    nll = -JOINT[x0[:, 0], x0[:, 1]].log()
    torch.testing.assert_close(exact_bound(method, x0, nodes=200), nll, atol=2e-4, rtol=0)
    with torch.no_grad():
        net.table += 0.3 * torch.randn(net.table.shape, generator=gen(1), dtype=torch.float64)
    p = JOINT[x0[:, 0], x0[:, 1]]
    assert float((p * exact_bound(method, x0, nodes=200)).sum()) > float((p * nll).sum()) + 0.01


def test_monte_carlo_likelihood_is_unbiased_for_the_bound():
    table = torch.randn(V + 1, V + 1, L, V, generator=gen(7), dtype=torch.float64)
    method = method_with(TableNet(table), "absorbing", likelihood_samples=4)
    x0 = all_sequences(V).repeat(400, 1)
    est = -method.log_likelihood(x0, gen(3)).view(400, 9)
    exact = exact_bound(method, all_sequences(V), nodes=200)
    se = est.std(0) / math.sqrt(400)
    assert ((est.mean(0) - exact).abs() < 4.5 * se).all(), (est.mean(0), exact, se)


def test_uniform_likelihood_is_the_integrand_at_stratified_times_plus_the_prior():
    # The uniform graph's per-sample values are heavy-tailed as t -> 0 (a jumped token has
    # r ~ V / t), so a sample mean over a few hundred draws is no test of unbiasedness; the
    # integrand itself is checked against the closed form above. Here: the same draws by hand.
    from gmbench_methods.discrete_diffusion.masking import stratified_times

    table = torch.randn(V + 1, V + 1, L, V, generator=gen(7), dtype=torch.float64)
    method = method_with(TableNet(table, fade=True), "uniform", likelihood_samples=3)
    x0 = all_sequences(V)
    got = method.log_likelihood(x0, gen(5))
    g = gen(5)
    t = stratified_times((9, 3), g).reshape(-1)
    xs = x0.repeat_interleave(3, 0)
    x_t = method.trans.sample(xs, 1 - (1 - 1e-3) * t, g)
    f = method.weighted_score_entropy(method.log_score(x_t, t), x_t, xs, t).view(9, 3).mean(1)
    torch.testing.assert_close(got, -(f + method.prior_term(x0)))
    assert ((t > torch.arange(3).repeat(9) / 3) & (t <= (torch.arange(3).repeat(9) + 1) / 3)).all()


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_training_loss_is_the_rate_weighted_score_entropy_per_token(graph):
    table = torch.randn(V + 1, V + 1, L, V, generator=gen(9), dtype=torch.float64)
    method = method_with(TableNet(table), graph, t_min=0.2)
    eps = 0.0 if graph == "absorbing" else 1e-3
    x0 = all_sequences(V).repeat(30, 1)
    torch.manual_seed(4)
    loss = method.training_step("score_entropy", x0, 0)["adam"]
    torch.manual_seed(4)  # the same draws, by hand
    t = 0.2 + 0.8 * torch.rand(len(x0), dtype=torch.float64)
    keep = 1 - (1 - eps) * t
    x_t = method.trans.sample(x0, keep)
    per_position = score_entropy(method.trans, method.log_score(x_t, t), x_t, x0, keep)
    torch.testing.assert_close(loss, (((1 - eps) / keep) * per_position.sum(1)).sum() / x0.numel())
    if graph == "absorbing":
        assert bool(((x_t == x0) | (x_t == V)).all())


# ------------------------------------------------------------------ samplers


def tv(out: torch.Tensor) -> float:
    freq = torch.bincount(out.flatten(), minlength=V).double() / out.numel()
    return 0.5 * float((freq - P0).abs().sum())


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_tweedie_sampler_is_exact_for_the_exact_score_in_one_step(graph):
    n = 3000
    for nfe in (1, 5):
        method = method_with(exact_score_net(graph), graph, chunk_rows=4096)  # one call per step
        out = method.sample(n, "analytic", nfe, gen(nfe))
        assert out.shape == (n, L) and out.dtype == torch.long and ((out >= 0) & (out < V)).all()
        freq = torch.bincount(out.flatten(), minlength=V).double() / out.numel()
        assert ((freq - P0).abs() < 5 * (P0 * (1 - P0) / out.numel()).sqrt()).all(), (nfe, freq)
        assert method.net.calls == nfe and method.last_sampling["network_calls"] == nfe


def test_euler_needs_many_steps_where_tweedie_needs_one():
    # uniform graph: one Euler step from uniform noise jumps with the rate at t = 1 and lands
    # near uniform; with many small steps it approaches p0 (first-order error).
    one = method_with(exact_score_net("uniform"), "uniform").sample(4000, "euler", 1, gen(1))
    many = method_with(exact_score_net("uniform"), "uniform").sample(4000, "euler", 200, gen(2))
    exact = method_with(exact_score_net("uniform"), "uniform").sample(4000, "analytic", 1, gen(3))
    assert tv(one) > 0.1 and tv(many) < 0.03 and tv(exact) < 0.03, (tv(one), tv(many), tv(exact))
    # absorbing: Euler's last step unmasks every token from the scores, no [MASK] left
    out = method_with(exact_score_net("absorbing")).sample(4000, "euler", 3, gen(4))
    assert ((out >= 0) & (out < V)).all() and tv(out) < 0.03


def test_unconditioned_absorbing_network_is_mdlms():
    from gmbench_methods.discrete_diffusion.mdlm import MDLM

    data = spec(12, 27)
    plain = SEDD(data, model_size="tiny", time_conditioning=False)
    assert plain.num_parameters() == MDLM(data, model_size="tiny").num_parameters()
    x = torch.randint(0, 27, (4, 12), generator=gen(0))
    assert torch.isfinite(plain.training_step("score_entropy", x, 0)["adam"])
    assert torch.isfinite(plain.log_likelihood(x, gen(1))).all()


def test_deterministic_given_the_generator():
    torch.manual_seed(0)
    method = SEDD(spec(12, 27), model_size="tiny")
    method.train(False)
    x = torch.randint(0, 27, (20, 12), generator=gen(1))
    for sampler in ("euler", "analytic"):
        a, b, c = (method.sample(6, sampler, 5, gen(s)) for s in (1, 1, 2))
        assert torch.equal(a, b) and not torch.equal(a, c) and ((a >= 0) & (a < 27)).all()
    la, lb, lc = (method.log_likelihood(x, gen(s)) for s in (1, 1, 2))
    assert la.shape == (20,) and torch.equal(la, lb) and not torch.equal(la, lc) and (la < 0).all()


def test_bad_settings_give_one_line_errors():
    with pytest.raises(MethodError, match="unknown graph 'absorb'"):
        SEDD(spec(), model_size="tiny", graph="absorb")
    with pytest.raises(MethodError, match="absorbing graph needs eps = 0"):
        SEDD(spec(), model_size="tiny", eps=1e-3)
    with pytest.raises(MethodError, match="needs time_conditioning=True"):
        SEDD(spec(), model_size="tiny", graph="uniform", time_conditioning=False)
    method = method_with(exact_score_net("absorbing"))
    with pytest.raises(MethodError, match="no sampler 'tweedie'"):
        method.sample(2, "tweedie", 4, gen())
    with pytest.raises(MethodError, match="need nfe >= 1"):
        method.sample(2, "euler", 0, gen())
    with pytest.raises(MethodError, match=r"token ids must lie in 0\.\.2"):
        method.log_likelihood(torch.full((2, L), V), gen())


# ------------------------------------------------------------------ registered, learns


def test_registered_with_its_claims():
    # through the module's hooks (the entry point is pyproject's; a stale gmbench.egg-info in
    # the working directory can hide newly added entry points from importlib.metadata)
    import gmbench_methods.discrete_diffusion.sedd as module
    from gmbench.plugins import Registries, make_plugin_manager

    reg = Registries(make_plugin_manager(extra_plugins=(module,), load_entrypoints=False))
    assert reg.methods.get("sedd") is SEDD
    assert reg.claims.get("sedd-absorbing-beats-uniform-text-bpc").b.method == "sedd[graph=uniform]"
    assert reg.claims.get("sedd-beats-d3pm-text-bpc").b.method == "d3pm"
    assert reg.claims.get("mdlm-beats-sedd-text-bpc").relation == "better"


def test_learns_synthlang_at_the_smoke_budget():
    data = SyntheticLanguage(seq_len=16, n_train=4000, n_test=500)
    torch.manual_seed(0)
    method = SEDD(data.spec(), model_size=SMOKE.model_size)
    reports = train(method, data.split("train").x, SMOKE, "text", gen(0))
    assert reports[0].steps > 500
    scores = HeldOutLikelihood().score_model(method, EvalContext(dataset=data, n_samples=0, seed=0))
    counts = torch.bincount(data.split("train").x.flatten(), minlength=27).double()
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * p[p > 0].log2()).sum())
    # measured: 2.60 bits/char (bound) against the unigram 4.51, mdlm's 2.83
    assert scores["test_bpc"] < unigram - 1.0, (scores, unigram)
    assert scores["test_bpc_gap"] > -4 * scores["_stderr"], scores
    for sampler in ("euler", "analytic"):
        out = method.sample(64, sampler, 20, gen(1))
        assert ((out >= 0) & (out < 27)).all()


class TestSEDDConforms(MethodConformance):
    """The shared contract suite (shapes, budget, determinism, checkpoints)."""

    method = SEDD
    load_entrypoints = False
