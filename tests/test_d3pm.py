"""Tests for the `d3pm` plugin (Austin et al., arXiv 2107.03006).

Closed forms checked: every ``Q_t`` is row-stochastic and ``Qbar_t = Q_1 .. Q_t`` equals
``M(abar_t)`` with ``abar_t = 1 - t / T`` (absorbing, ``beta_t = 1 / (T - t + 1)``) or
``f(t) / f(0)`` (cosine); the posterior ``q(x_s | x_t, x_0)`` and Eq. 4's reverse step
against Bayes' rule on explicit matrix products (strides too); on a 3-token vocabulary
and length 2, with every ``x_t`` enumerated: the KL decomposition of the bound equals the
bound computed over trajectories (a table model with arbitrary outputs), and for
factorised data and the model ``p~ = p_0`` it equals ``-log p_0(x_0)`` plus the prior
mismatch ``E log q(x_T) / pi(x_T)`` by hand (0 for absorbing); for dependent data and the
exact denoiser, fewer steps give a looser bound. The Monte Carlo likelihood and the
training loss agree with those, the sampler draws ``p_0`` and counts its calls, and the
method learns synthlang at the smoke budget.
"""

from __future__ import annotations

import itertools
import math

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
from gmbench_methods.discrete_diffusion.d3pm import (
    D3PM,
    cosine_alpha_bars,
    inverse_alpha_bars,
    reverse_log_probs,
    sub_chain,
)
from gmbench_methods.discrete_diffusion.transitions import KeepOrJump

V, L = 3, 2  # the hand-checked vocabulary and length
P0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
# a dependent pair (rows: first token, columns: second), for the fewer-steps test
JOINT = torch.tensor([[0.30, 0.02, 0.03], [0.02, 0.25, 0.03], [0.05, 0.05, 0.25]], dtype=torch.float64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spec(length: int = L, vocab: int = V) -> DataSpec:
    return DataSpec(name="hand", modality="text", shape=(length,), vocab_size=vocab)


def all_sequences(k: int, length: int = L) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(k), repeat=length)), dtype=torch.long)


class UnigramNet(nn.Module):
    """``p~(x_0 | x_t) = p`` whatever ``x_t`` and ``t``; counts calls."""

    def __init__(self, p: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", p.log())  # float64: exact closed forms
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return self.logits.expand(*x.shape, -1)


class TableNet(nn.Module):
    """Length-2 model with arbitrary outputs: logits ``table[x_0, x_1, position] * (1 + t)`` (or the
    table's log-probabilities unscaled with ``scale_time=False``)."""

    def __init__(self, table: torch.Tensor, scale_time: bool = True):
        super().__init__()
        self.register_buffer("table", table.float())
        self.scale_time = scale_time

    def forward(self, x, t):
        out = self.table[x[:, 0], x[:, 1]]
        return out * (1.0 + t.float()[:, None, None]) if self.scale_time else out


def method_with(net: nn.Module, transition: str = "absorbing", **kw) -> D3PM:
    torch.manual_seed(0)
    method = D3PM(spec(), model_size="tiny", transition=transition, **kw)
    method.net = net
    return method


# ------------------------------------------------------------------ transitions


def explicit_q(transition: str, beta: float, vocab: int = V) -> torch.Tensor:
    """The paper's one-step matrix written out (row = from)."""
    if transition == "absorbing":
        k = vocab + 1
        q = (1 - beta) * torch.eye(k, dtype=torch.float64)
        q[:, vocab] += beta
        return q
    return (1 - beta) * torch.eye(vocab, dtype=torch.float64) + beta / vocab


def betas_of(schedule: str, timesteps: int) -> list[float]:
    t = torch.arange(1, timesteps + 1, dtype=torch.float64)
    if schedule == "inverse":
        return (1.0 / (timesteps - t + 1)).tolist()
    f = torch.cos((torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + 0.008) / 1.008 * math.pi / 2)
    return (1 - f[1:] / f[:-1]).clamp(max=0.999).tolist()


@pytest.mark.parametrize("transition,schedule", [("absorbing", "inverse"), ("uniform", "cosine"),
                                                 ("uniform", "inverse")])
@pytest.mark.parametrize("timesteps", [7, 1000])
def test_q_is_row_stochastic_and_qbar_matches_closed_forms(transition, schedule, timesteps):
    trans = KeepOrJump(transition, V)
    abar = (inverse_alpha_bars if schedule == "inverse" else cosine_alpha_bars)(timesteps)
    product = torch.eye(trans.num_states, dtype=torch.float64)
    for t, beta in enumerate(betas_of(schedule, timesteps), start=1):
        q = explicit_q(transition, beta)
        assert (q >= 0).all() and torch.allclose(q.sum(1), torch.ones(trans.num_states, dtype=torch.float64))
        product = product @ q
        assert torch.allclose(product, trans.matrix(float(abar[t])), atol=1e-12, rtol=0), t
        assert torch.allclose(trans.probs(torch.arange(V), float(abar[t])), product[:V], atol=1e-12, rtol=0)
    grid = torch.arange(timesteps + 1, dtype=torch.float64)
    if schedule == "inverse":  # a token is masked at a uniformly random step
        assert torch.allclose(abar, 1 - grid / timesteps, atol=1e-12, rtol=0) and abar[-1] == 0
    else:  # the cumulative product telescopes to f(t) / f(0) until the clip at t = T
        f = torch.cos((grid / timesteps + 0.008) / 1.008 * math.pi / 2)
        assert torch.allclose(abar[:-1], f[:-1] / f[0], atol=1e-12, rtol=0)
        assert float(abar[-1]) == pytest.approx(0.001 * float(abar[-2]), rel=1e-9)


def test_forward_draws_follow_the_marginal():
    trans = KeepOrJump("uniform", V)
    x0 = torch.full((40000,), 1)
    draws = trans.sample(x0, 0.4, gen(1))
    freq = torch.bincount(draws, minlength=V).double() / len(draws)
    expected = trans.probs(torch.tensor(1), 0.4)
    assert ((freq - expected).abs() < 5 * (expected * (1 - expected) / len(draws)).sqrt()).all(), (freq, expected)
    masked = KeepOrJump("absorbing", V).sample(x0, 0.4, gen(2))
    assert set(masked.unique().tolist()) == {1, V}
    assert float((masked == V).double().mean()) == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_posterior_and_eq4_match_bayes_rule_on_explicit_matrices(transition):
    timesteps = 6
    trans = KeepOrJump(transition, V)
    schedule = "inverse" if transition == "absorbing" else "cosine"
    abar = (inverse_alpha_bars if schedule == "inverse" else cosine_alpha_bars)(timesteps)
    qs = [explicit_q(transition, b) for b in betas_of(schedule, timesteps)]

    def prod(a, b):  # Q_{a+1} .. Q_b
        out = torch.eye(trans.num_states, dtype=torch.float64)
        for q in qs[a:b]:
            out = out @ q
        return out

    p_soft = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    checked = 0
    for s, t in itertools.combinations(range(timesteps + 1), 2):  # every stride s < t
        bar_s, step, bar_t = prod(0, s), prod(s, t), prod(0, t)
        for x_t in range(trans.num_states):
            xt = torch.tensor([[x_t]])
            ab_s, ab_t = abar[s].reshape(1), abar[t].reshape(1)
            for x0 in range(V):
                if bar_t[x0, x_t] == 0:
                    continue  # x_t impossible from x0
                bayes = bar_s[x0] * step[:, x_t] / bar_t[x0, x_t]
                one_hot = torch.full((1, 1, V), -math.inf, dtype=torch.float64)
                one_hot[..., x0] = 0.0
                got = reverse_log_probs(trans, one_hot, xt, ab_s, ab_t).exp()[0, 0]
                assert torch.allclose(got, bayes, atol=1e-12, rtol=0), (s, t, x_t, x0)
                checked += 1
            # Eq. 4: sum over x~0 of q(x_s, x_t | x~0) p~(x~0), normalised
            joint = sum(p_soft[x0] * bar_s[x0] * step[:, x_t] for x0 in range(V))
            if joint.sum() == 0:
                continue  # a data token at t = T (absorbing): unreachable
            got = reverse_log_probs(trans, p_soft.log().reshape(1, 1, V), xt, ab_s, ab_t).exp()[0, 0]
            assert torch.allclose(got, joint / joint.sum(), atol=1e-12, rtol=0), (s, t, x_t)
    assert checked > 100


# ------------------------------------------------------------------ the bound, by hand


def exact_nelbo(method: D3PM, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """The bound on the ``steps``-step sub-chain with the expectation over ``x_t`` enumerated
    (every state sequence, weighted by ``q(x_t | x_0)``) through the method's own terms."""
    trans, tau = method.trans, torch.tensor(sub_chain(method.timesteps, steps))
    states = all_sequences(trans.num_states, x0.shape[1])
    n, m = x0.shape[0], states.shape[0]
    j = torch.arange(1, steps + 1).repeat_interleave(n * m)
    s, t = tau[j - 1], tau[j]
    x0s = x0.repeat_interleave(m, 0).repeat(steps, 1)
    x_t = states.repeat(n, 1).repeat(steps, 1)
    weight = trans.probs(x0s, method.abar(t)).gather(-1, x_t[..., None]).squeeze(-1).prod(-1)
    with torch.no_grad():
        kl = method.kl_term(x0s, x_t, method.denoiser(x_t, t, torch.float64), s, t)
    kl = torch.where(weight > 0, kl, torch.zeros_like(kl))  # x_t impossible from x0
    return (weight * kl).view(steps, n, m).sum((0, 2)) + method.prior_term(x0)


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_bound_of_the_data_marginal_model_is_minus_log_p0_plus_the_prior_mismatch(transition):
    # p~ = p0 for factorised data makes Eq. 4 the exact reverse q(x_{t-1} | x_t) of one token,
    # so the bound is -log p0(x0) + E_{q(x_T | x0)} log(q(x_T) / pi(x_T)) per token, by hand:
    # q(x_T | x0) = abar_T onehot + (1 - abar_T) pi and q(x_T) = abar_T p0 + (1 - abar_T) pi.
    method = method_with(UnigramNet(P0), transition)
    x0 = all_sequences(V)
    a_T, pi = float(method.alpha_bars[-1]), method.trans.pi
    q_T = a_T * torch.cat([P0, torch.zeros(method.trans.num_states - V, dtype=torch.float64)]) + (1 - a_T) * pi
    mismatch = torch.stack([
        torch.where(q > 0, q * (q_T.log() - pi.log()), torch.zeros_like(q)).sum()
        for q in method.trans.probs(torch.arange(V), a_T)
    ])
    by_hand = (-P0.log()[x0] + mismatch[x0]).sum(1)
    got = exact_nelbo(method, x0, method.timesteps)  # T = 1000, every step
    torch.testing.assert_close(got, by_hand, atol=1e-9, rtol=0)
    if transition == "absorbing":
        torch.testing.assert_close(got, -P0.log()[x0].sum(1), atol=1e-9, rtol=0)
    else:
        assert 0 < float(mismatch.max()) < 1e-5  # the cosine schedule's clipped abar_T ~ 1e-6
    # the hand-made uniform model: 2 log 3 for every sequence (absorbing, any number of steps)
    flat = method_with(UnigramNet(torch.full((V,), 1 / V, dtype=torch.float64)), "absorbing")
    for steps in (1, 3, 20):
        torch.testing.assert_close(exact_nelbo(flat, x0, steps), torch.full((9,), 2 * math.log(3), dtype=torch.float64),
                                   atol=1e-9, rtol=0)


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_kl_decomposition_equals_the_bound_over_trajectories(transition):
    # E_q[log q(x_{1:T} | x0) - log p(x_{0:T})], from the pairwise marginals of the forward chain
    # on the 16 (or 9) sequence states and a reverse step built by brute force (Eq. 4 with
    # explicit matrices), for a model whose outputs depend on both tokens and on t.
    timesteps = 3
    table = torch.randn(V + 1, V + 1, L, V, generator=gen(5), dtype=torch.float64) * 1.5
    method = method_with(TableNet(table), transition, timesteps=timesteps)
    trans = method.trans
    k = trans.num_states
    qs = [explicit_q(transition, b) for b in betas_of(method.schedule, timesteps)]
    seq_q = [torch.kron(q, q) for q in qs]
    states = all_sequences(k)
    bars = [torch.eye(k, dtype=torch.float64)]
    for q in qs:
        bars.append(bars[-1] @ q)

    def reverse_matrix(t: int) -> torch.Tensor:  # [x_t, x_{t-1}] over sequence states
        logits = method.net(states, torch.full((len(states),), t / timesteps)).double()
        p_x0 = logits.softmax(-1)  # (S, L, V)
        out = torch.ones(len(states), len(states), dtype=torch.float64)
        for pos in range(L):
            joint = torch.einsum("sv,vk,k->sk", p_x0[:, pos], bars[t - 1][:V], torch.ones(k, dtype=torch.float64))
            joint = joint * qs[t - 1][:, states[:, pos]].T  # q(x_t | x_{t-1}) at this position
            per_pos = joint / joint.sum(1, keepdim=True)  # (S = x_t, k = x_{t-1} at pos)
            out = out * per_pos[:, states[:, pos]]
        return out

    rev = [None] + [reverse_matrix(t) for t in range(1, timesteps + 1)]
    pi_seq = torch.kron(trans.pi, trans.pi)
    x0 = all_sequences(V)
    for row in x0:
        start = torch.zeros(len(states), dtype=torch.float64)
        start[int(row[0]) * k + int(row[1])] = 1.0
        marg, total = start, 0.0
        for t in range(1, timesteps + 1):
            pair = marg[:, None] * seq_q[t - 1]  # q(x_{t-1}, x_t | x0)
            ok = pair > 0
            total += float((pair[ok] * (seq_q[t - 1][ok].log() - rev[t].T[ok].log())).sum())
            marg = marg @ seq_q[t - 1]
        ok = marg > 0
        total -= float((marg[ok] * pi_seq[ok].log()).sum())
        got = float(exact_nelbo(method, row[None], timesteps))
        assert got == pytest.approx(total, abs=1e-9), (row, got, total)


def test_fewer_steps_loosen_the_bound_of_the_exact_denoiser():
    # Dependent tokens: with one step both are unmasked at once and drawn from their
    # marginals (bound = H(X1) + H(X2)); with many steps they unmask one at a time and the
    # exact conditional makes the bound tight (-> H(X1, X2)).
    table = torch.empty(V + 1, V + 1, L, V, dtype=torch.float64)
    first, second = JOINT.sum(1), JOINT.sum(0)
    for a, b in itertools.product(range(V + 1), repeat=2):
        table[a, b, 0] = (JOINT[:, b] if b < V else first).log()  # p(x^0 | x_t^1)
        table[a, b, 1] = (JOINT[a] if a < V else second).log()  # p(x^1 | x_t^0)
    method = method_with(TableNet(table, scale_time=False), "absorbing")
    x0 = all_sequences(V)
    weights = JOINT[x0[:, 0], x0[:, 1]]
    expected = {n: float((weights * exact_nelbo(method, x0, n)).sum()) for n in (1, 2, 10, 1000)}
    marginal_entropies = float(-(first * first.log()).sum() - (second * second.log()).sum())
    joint_entropy = float(-(JOINT * JOINT.log()).sum())
    assert expected[1] == pytest.approx(marginal_entropies, abs=1e-9)
    assert expected[1] > expected[2] > expected[10] > expected[1000] > joint_entropy - 1e-9
    assert expected[1000] == pytest.approx(joint_entropy, abs=2e-3)  # gap: both unmask in one step, ~1/T
    assert marginal_entropies - joint_entropy > 0.3  # the tokens do depend on each other


def test_monte_carlo_likelihood_is_unbiased_for_the_exact_bound():
    table = torch.randn(V + 1, V + 1, L, V, generator=gen(7), dtype=torch.float64)
    for transition, steps in (("absorbing", 1000), ("uniform", 1000), ("absorbing", 20)):
        method = method_with(TableNet(table), transition, bound_steps=steps, likelihood_samples=4)
        x0 = all_sequences(V).repeat(400, 1)
        est = -method.log_likelihood(x0, gen(3)).view(400, 9)
        exact = exact_nelbo(method, all_sequences(V), steps)
        se = est.std(0) / math.sqrt(400)
        assert ((est.mean(0) - exact).abs() < 4.5 * se).all(), (transition, steps, est.mean(0), exact, se)


def test_bounds_at_several_step_counts_share_their_draws():
    # log_likelihood_steps (the interface of mdlm's likelihood_steps metric): steps=None and
    # steps > T are the model's own T-step bound; equally seeded calls use the same uniforms.
    table = torch.randn(V + 1, V + 1, L, V, generator=gen(7), dtype=torch.float64)
    method = method_with(TableNet(table), "absorbing", timesteps=100, likelihood_samples=2)
    x0 = all_sequences(V).repeat(50, 1)
    own = method.log_likelihood_steps(x0, gen(4), None)
    torch.testing.assert_close(own, method.log_likelihood_steps(x0, gen(4), 100), rtol=0, atol=0)
    torch.testing.assert_close(own, method.log_likelihood_steps(x0, gen(4), 1000), rtol=0, atol=0)
    torch.testing.assert_close(own, method.log_likelihood(x0, gen(4)), rtol=0, atol=0)
    coarse = method.log_likelihood_steps(x0, gen(4), 10)
    assert float(coarse.mean()) < float(own.mean())  # a looser bound, on the same draws
    g = gen(4)
    method.log_likelihood_steps(x0, g, 10)
    after_coarse = torch.rand(1, generator=g)
    g = gen(4)
    method.log_likelihood_steps(x0, g, 100)
    assert torch.equal(after_coarse, torch.rand(1, generator=g))  # same number of draws


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_training_loss_is_the_step_term_plus_lambda_cross_entropy(transition):
    table = torch.randn(V + 1, V + 1, L, V, generator=gen(9), dtype=torch.float64)
    method = method_with(TableNet(table), transition, hybrid_lambda=0.25)
    x0 = all_sequences(V).repeat(30, 1)
    torch.manual_seed(4)
    loss = method.training_step("hybrid", x0, 0)["adam"]
    torch.manual_seed(4)  # the same draws, by hand
    t = torch.ceil((1 - torch.rand(len(x0), dtype=torch.float64)) * 1000).long()
    x_t = method.trans.sample(x0, method.abar(t))
    log_x0 = method.denoiser(x_t, t)
    ce = -log_x0.gather(-1, x0[..., None]).squeeze(-1).double().sum(1)
    by_hand = (method.kl_term(x0, x_t, log_x0, t - 1, t) + 0.25 * ce).sum() / x0.numel()
    torch.testing.assert_close(loss, by_hand)
    assert 1 <= int(t.min()) and int(t.max()) <= 1000 and len(t.unique()) > 100  # t ~ U{1..T}
    if transition == "absorbing":
        assert bool(((x_t == x0) | (x_t == V)).all())  # each token kept or masked


# ------------------------------------------------------------------ the sampler


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_sampler_with_the_data_marginal_model_draws_p0_at_any_number_of_steps(transition):
    # Eq. 4 with p~ = p0 is the exact reverse of each token at any stride.
    for nfe in (1, 7):
        method = method_with(UnigramNet(P0), transition, chunk_rows=4096)  # one call per step
        out = method.sample(3000, "ancestral", nfe, gen(nfe))
        assert out.shape == (3000, L) and out.dtype == torch.long
        assert ((out >= 0) & (out < V)).all()  # no [MASK] left
        freq = torch.bincount(out.flatten(), minlength=V).double() / out.numel()
        assert ((freq - P0).abs() < 5 * (P0 * (1 - P0) / out.numel()).sqrt()).all(), (nfe, freq)
        assert method.net.calls == nfe and method.last_sampling["network_calls"] == nfe


def test_network_calls_follow_nfe_and_are_capped_at_T():
    method = method_with(UnigramNet(P0), "absorbing", timesteps=5)
    method.sample(4, "ancestral", 3, gen())
    assert method.net.calls == 3
    method.sample(4, "ancestral", 50, gen())
    assert method.net.calls == 3 + 5 and method.last_sampling["steps"] == 5
    assert sub_chain(1000, 3) == [0, 333, 666, 1000] and sub_chain(5, 5) == [0, 1, 2, 3, 4, 5]


def test_unconditioned_absorbing_network_is_mdlms():
    from gmbench_methods.discrete_diffusion.mdlm import MDLM

    data = spec(12, 27)
    plain = D3PM(data, model_size="tiny", time_conditioning=False)
    assert plain.num_parameters() == MDLM(data, model_size="tiny").num_parameters()
    assert D3PM(data, model_size="tiny").num_parameters() > plain.num_parameters()  # adaLN
    x = torch.randint(0, 27, (4, 12), generator=gen(0))
    assert torch.isfinite(plain.training_step("hybrid", x, 0)["adam"])
    assert ((plain.sample(3, "ancestral", 4, gen()) < 27)).all()


def test_deterministic_given_the_generator_and_untrained_is_a_valid_bound():
    torch.manual_seed(0)
    method = D3PM(spec(12, 27), model_size="tiny")
    method.train(False)
    x = torch.randint(0, 27, (20, 12), generator=gen(1))
    a, b, c = (method.sample(6, "ancestral", 5, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c) and ((a >= 0) & (a < 27)).all()
    la, lb, lc = (method.log_likelihood(x, gen(s)) for s in (1, 1, 2))
    assert la.shape == (20,) and torch.equal(la, lb) and not torch.equal(la, lc)
    assert (la < 0).all()


def test_bad_settings_give_one_line_errors():
    with pytest.raises(MethodError, match="unknown transition 'gaussian'"):
        D3PM(spec(), model_size="tiny", transition="gaussian")
    with pytest.raises(MethodError, match="needs abar_T = 0"):
        D3PM(spec(), model_size="tiny", transition="absorbing", schedule="cosine")
    with pytest.raises(MethodError, match="bound_steps must be in 1..timesteps"):
        D3PM(spec(), model_size="tiny", timesteps=10, bound_steps=11)
    with pytest.raises(MethodError, match="needs time_conditioning=True"):
        D3PM(spec(), model_size="tiny", transition="uniform", time_conditioning=False)
    method = method_with(UnigramNet(P0))
    with pytest.raises(MethodError, match="need nfe >= 1"):
        method.sample(2, "ancestral", 0, gen())
    with pytest.raises(MethodError, match=r"token ids must lie in 0\.\.2"):
        method.log_likelihood(torch.full((2, L), V), gen())
    with pytest.raises(MethodError, match="does not support 'toy2d'"):
        D3PM(DataSpec(name="t", modality="toy2d", shape=(2,)))


# ------------------------------------------------------------------ registered, learns


def test_registered_with_its_claims():
    # through the module's hooks (the entry point is pyproject's; a stale gmbench.egg-info in
    # the working directory can hide newly added entry points from importlib.metadata)
    import gmbench_methods.discrete_diffusion.d3pm as module
    from gmbench.plugins import Registries, make_plugin_manager

    reg = Registries(make_plugin_manager(extra_plugins=(module,), load_entrypoints=False))
    assert reg.methods.get("d3pm") is D3PM
    claim = reg.claims.get("d3pm-absorbing-beats-uniform-text-bpc")
    assert (claim.a.method, claim.b.method) == ("d3pm", "d3pm[transition=uniform]")
    assert reg.claims.get("d3pm-fewer-steps-loosen-bound-text-bpc").b.method == "d3pm[bound_steps=20]"


def test_learns_synthlang_at_the_smoke_budget():
    # The data and budget of mdlm's and ar's learning tests (16-character windows).
    data = SyntheticLanguage(seq_len=16, n_train=4000, n_test=500)
    torch.manual_seed(0)
    method = D3PM(data.spec(), model_size=SMOKE.model_size)
    reports = train(method, data.split("train").x, SMOKE, "text", gen(0))
    assert reports[0].steps > 500
    scores = HeldOutLikelihood().score_model(method, EvalContext(dataset=data, n_samples=0, seed=0))
    counts = torch.bincount(data.split("train").x.flatten(), minlength=27).double()
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * p[p > 0].log2()).sum())
    # measured: 2.27 bits/char (bound) against the unigram 4.51, mdlm's 2.83
    assert scores["test_bpc"] < unigram - 1.0, (scores, unigram)
    # a bound cannot beat the source's own code length beyond Monte Carlo noise
    assert scores["test_bpc_gap"] > -4 * scores["_stderr"], scores
    out = method.sample(64, "ancestral", 20, gen(1))
    assert ((out >= 0) & (out < 27)).all()


class TestD3PMConforms(MethodConformance):
    """The shared contract suite (shapes, budget, determinism, checkpoints)."""

    method = D3PM
    load_entrypoints = False
