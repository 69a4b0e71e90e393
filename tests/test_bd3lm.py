"""Tests for the `bd3lm` plugin (Arriola et al., arXiv 2503.09573, Block Diffusion).

Checked: the vectorised training mask ``[[M_BD, M_OBC], [0, M_BC]]`` entry by entry on a
tiny case; the vectorised pass and the two-pass (KV-cached) form give the logits of naive
per-block passes over ``x^{<b} ⊕ x_t^b``; the two limits on the same network outputs
(block size = L is MDLM: logits, likelihood and training loss; block size 1 is AR: the
full-masking loss is AR's cross-entropy and the bound's expectation is AR's NLL); the
NELBO (continuous and T-step) against its expectation computed by hand, enumerating every
mask of a tiny vocabulary and length; the clipped training times; KV-cached sampling gives
the uncached tokens with the same network calls, at most ``nfe * B`` and counted so by
the host; variable-length generation stops at an end-of-sequence token; it learns
synthlang at the smoke budget; the conformance kit.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from gmbench.backbones.transformer import KVCache
from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.evaluate import check_nfe, counted_nfe
from gmbench.method import MethodError
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.discrete_diffusion.ar import AR
from gmbench_methods.discrete_diffusion.bd3lm import BD3LM, block_causal_mask, block_diffusion_mask, default_clip
from gmbench_methods.discrete_diffusion.masking import stratified_times
from gmbench_methods.discrete_diffusion.mdlm import MDLM

V = 27


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def text_spec(length: int, vocab: int = V) -> DataSpec:
    return DataSpec(name="t", modality="text", shape=(length,), vocab_size=vocab)


def make_bd3(length: int = 16, vocab: int = V, seed: int = 0, sharpen: float = 8.0, **kw) -> BD3LM:
    """A tiny untrained BD3-LM whose head is scaled up, so that its predictions are peaked and
    depend strongly on the context (a cache that mixed rows or positions up would show)."""
    torch.manual_seed(seed)
    method = BD3LM(text_spec(length, vocab), model_size="tiny", **kw)
    with torch.no_grad():
        method.net.out.weight.mul_(sharpen)
    method.train(False)
    return method


def noisy(x: torch.Tensor, rate: float, seed: int, mask_id: int) -> torch.Tensor:
    z = x.clone()
    z[torch.rand(x.shape, generator=gen(seed)) < rate] = mask_id
    return z


def naive_block_logits(method: BD3LM, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Block ``b``'s logits from its own forward pass over ``x^{<b} ⊕ z^b`` (clean earlier
    blocks, noisy block b), every query seeing its own block and the earlier ones."""
    size, parts = method.block_size, []
    for b in range(method.num_blocks):
        lo, hi = b * size, (b + 1) * size
        prefix = torch.cat([x[:, :lo], z[:, lo:hi]], dim=1)
        block = torch.arange(hi) // size
        mask = block[None, :] <= block[:, None]
        parts.append(method.net(prefix, attn_mask=mask)[:, lo:hi])
    return torch.cat(parts, dim=1)


# ------------------------------------------------------------------ masks and passes


def test_block_diffusion_mask_of_a_tiny_case():
    # L = 4, L' = 2: noisy x_t^1 x_t^2 | x_t^3 x_t^4, then clean x^1 x^2 | x^3 x^4
    expected = torch.tensor([
        # noisy keys   clean keys
        [1, 1, 0, 0,   0, 0, 0, 0],  # noisy block 1: its own noisy block only
        [1, 1, 0, 0,   0, 0, 0, 0],
        [0, 0, 1, 1,   1, 1, 0, 0],  # noisy block 2: its own noisy block + clean block 1
        [0, 0, 1, 1,   1, 1, 0, 0],
        [0, 0, 0, 0,   1, 1, 0, 0],  # clean block 1: clean block 1
        [0, 0, 0, 0,   1, 1, 0, 0],
        [0, 0, 0, 0,   1, 1, 1, 1],  # clean block 2: clean blocks 1-2
        [0, 0, 0, 0,   1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(block_diffusion_mask(4, 2), expected)
    assert torch.equal(block_causal_mask(4, 2), expected[4:, 4:])
    # the limits: block size 1 is causal with the query's own noisy token, block size L is
    # bidirectional within x_t and never looks at the clean copy
    one = block_diffusion_mask(5, 1)
    assert torch.equal(one[:5, :5], torch.eye(5, dtype=torch.bool))
    assert torch.equal(one[:5, 5:], torch.ones(5, 5, dtype=torch.bool).tril(-1))
    assert torch.equal(one[5:, 5:], torch.ones(5, 5, dtype=torch.bool).tril())
    full = block_diffusion_mask(5, 5)
    assert full[:5, :5].all() and not full[:5, 5:].any() and not full[5:, :5].any() and full[5:, 5:].all()


@pytest.mark.parametrize("block_size", [1, 4, 8, 16])
def test_vectorised_and_two_pass_logits_equal_naive_per_block_passes(block_size):
    method = make_bd3(16, block_size=block_size)
    x = torch.randint(0, V, (3, 16), generator=gen(1))
    z = noisy(x, 0.5, 2, V)
    with torch.no_grad():
        naive = naive_block_logits(method, z, x)
        vectorised = method.denoise(z, x)
        two_pass = method.denoise_two_pass(z, x)
        # several noisy draws per clean row share one clean pass
        z2 = torch.stack([z, noisy(x, 0.7, 3, V)], dim=1).reshape(6, 16)
        shared = method.denoise_two_pass(z2, x, draws=2)
        alone = method.denoise(z2, x.repeat_interleave(2, dim=0))
    torch.testing.assert_close(vectorised, naive, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two_pass, naive, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shared, alone, rtol=1e-4, atol=1e-4)
    # a clean token later in the sequence never reaches an earlier block's prediction
    later = x.clone()
    later[:, -1] = (later[:, -1] + 1) % V
    with torch.no_grad():
        moved = method.denoise(z, later)
    cut = 16 - block_size  # positions before the last block
    torch.testing.assert_close(moved[:, :cut], vectorised[:, :cut], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ the two limits


def shared_weights(length: int, block_size: int, **kw) -> tuple[MDLM, BD3LM]:
    torch.manual_seed(0)
    mdlm = MDLM(text_spec(length), model_size="tiny")
    bd3 = BD3LM(text_spec(length), model_size="tiny", block_size=block_size, **kw)
    bd3.net.load_state_dict(mdlm.net.state_dict())
    return mdlm, bd3


def test_block_size_L_is_mdlm_on_the_same_network_outputs():
    length = 12
    mdlm, bd3 = shared_weights(length, length, clip_min=1e-3, clip_max=1.0)  # MDLM's training range
    x = torch.randint(0, V, (64, length), generator=gen(4))
    z = noisy(x, 0.6, 5, V)
    with torch.no_grad():
        torch.testing.assert_close(bd3.denoise(z, x), mdlm.net(z), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bd3.denoise_two_pass(z, x), mdlm.net(z), rtol=1e-5, atol=1e-5)
    # the bound: the same draws (one block = one time per sequence) give the same values
    for steps in (None, 10):
        a = mdlm.log_likelihood_steps(x, gen(6), steps=steps)
        b = bd3.log_likelihood_steps(x, gen(6), steps=steps)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)
    # the training loss: the same global-RNG draws, the same per-token NELBO
    torch.manual_seed(7)
    loss_mdlm = mdlm.training_step("nelbo", x, 0)["adam"]
    torch.manual_seed(7)
    loss_bd3 = bd3.training_step("nelbo", x, 0)["adam"]
    torch.testing.assert_close(loss_bd3, loss_mdlm, rtol=1e-5, atol=1e-6)


def test_block_size_1_is_ar_on_the_same_network_outputs():
    length = 10
    torch.manual_seed(0)
    bd3 = BD3LM(text_spec(length), model_size="tiny", block_size=1)
    assert bd3.clip == (1.0, 1.0)  # the paper's tuned schedule for L' = 1: every token masked
    x = torch.randint(0, V, (12, length), generator=gen(8))
    with torch.no_grad():
        # the network's next-token predictions: each position masked, clean tokens before it
        logits = bd3.denoise(torch.full_like(x, V), x)
    ar = AR(text_spec(length), model_size="tiny")
    ar.logits = lambda inputs: logits  # AR's own loss and likelihood code on these outputs
    torch.manual_seed(1)
    loss = bd3.training_step("nelbo", x, 0)["adam"]
    torch.testing.assert_close(loss, ar.training_step("nll", x, 0)["adam"].double(), rtol=1e-5, atol=1e-6)
    ar_nll = -ar.log_likelihood(x)
    # the bound's expectation over masks and times: block l costs (1/t) P(masked) CE_l = CE_l for
    # every t, so it is AR's NLL exactly; the T-step estimate (finite variance: 1/t <= T) agrees
    draws = 300
    est = -bd3.log_likelihood_steps(x.repeat(draws, 1), gen(2), steps=8, samples=1).view(draws, -1)
    err = est.mean(0) - ar_nll
    se = est.std(0) / math.sqrt(draws)
    assert (err.abs() < 4 * se).all() and float(se.max()) < 0.05 * float(ar_nll.mean()), (err, se)
    # and by enumeration of the (single-token) masks, exactly
    torch.testing.assert_close(exact_bound(bd3, x[:4]), ar_nll[:4], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the NELBO by hand


def exact_bound(method: BD3LM, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """E over times and masks of the bound (Eq. 8), nats per sequence, by enumerating every mask
    pattern S of every block and running naive per-block passes.

    For the log-linear schedule a pattern with k of L' tokens masked has probability
    t^k (1 - t)^(L' - k) and weight 1/t, so its coefficient is the integral of
    t^(k-1) (1 - t)^(L' - k) over (0, 1], the Beta function B(k, L' - k + 1), or for T steps
    (1/T) sum_i t_i^(k-1) (1 - t_i)^(L' - k) at t_i = i/T.
    """
    size, (n, length) = method.block_size, x.shape
    total = torch.zeros(n, dtype=torch.float64)
    for b in range(method.num_blocks):
        lo = b * size
        for pattern in itertools.product([False, True], repeat=size):
            k = sum(pattern)
            if k == 0:
                continue
            if steps is None:
                coef = math.gamma(k) * math.gamma(size - k + 1) / math.gamma(size + 1)
            else:
                coef = sum((i / steps) ** (k - 1) * (1 - i / steps) ** (size - k) for i in range(1, steps + 1)) / steps
            masked = torch.zeros(length, dtype=torch.bool)
            masked[lo : lo + size] = torch.tensor(pattern)
            z = torch.where(masked, torch.full_like(x, method.mask_id), x)
            with torch.no_grad():
                logp = naive_block_logits(method, z, x).double().log_softmax(-1)
            ce = -logp.gather(-1, x[..., None]).squeeze(-1)[:, masked].sum(1)
            total += coef * ce
    return total


@pytest.mark.parametrize("steps", [None, 3])
def test_nelbo_estimate_against_the_enumerated_expectation(steps):
    # V = 3, L = 4, L' = 2: every mask pattern of every block, by hand; the estimator's
    # mean over many draws must agree within its Monte Carlo error
    method = make_bd3(4, vocab=3, block_size=2, sharpen=3.0)
    x = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1], [1, 0, 0, 2]])
    exact = exact_bound(method, x, steps)
    draws = 1500
    est = -method.log_likelihood_steps(x.repeat(draws, 1), gen(11), steps=steps, samples=2).view(draws, -1)
    err, se = est.mean(0) - exact, est.std(0) / math.sqrt(draws)
    # (and the check is sharp: the standard error is a few percent of the value; the
    # continuous estimator's weight 1/t is unbounded, so its error is the wider one)
    assert (err.abs() < 4 * se).all() and float(se.max()) < 0.05 * float(exact.mean()), (err, se, exact)


def test_training_nelbo_at_fixed_block_times_against_enumeration():
    # the vectorised training estimate at fixed per-block times t_b: E over masks is
    # sum_b (1/t_b) sum_S t_b^k (1 - t_b)^(L'-k) CE_S, enumerated with naive passes
    method = make_bd3(4, vocab=3, block_size=2, sharpen=3.0)
    x = torch.tensor([[0, 1, 2, 1], [2, 0, 1, 1]])
    t = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    exact = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for pattern in itertools.product([False, True], repeat=2):
            k = sum(pattern)
            if not k:
                continue
            masked = torch.zeros(4, dtype=torch.bool)
            masked[2 * b : 2 * b + 2] = torch.tensor(pattern)
            z = torch.where(masked, torch.full_like(x, 3), x)
            with torch.no_grad():
                logp = naive_block_logits(method, z, x).double().log_softmax(-1)
            ce = -logp.gather(-1, x[..., None]).squeeze(-1)[:, masked].sum(1)
            tb = float(t[0, b])
            exact += tb ** (k - 1) * (1 - tb) ** (2 - k) * ce
    draws = 1500
    torch.manual_seed(3)
    with torch.no_grad():
        est = method.nelbo(x.repeat(draws, 1), t.expand(2 * draws, 2)).view(draws, 2)
    err, se = est.mean(0) - exact, est.std(0) / math.sqrt(draws)
    assert (err.abs() < 4 * se).all() and float(se.max()) < 0.02 * float(exact.mean()), (err, se)


def test_training_times_are_clipped_and_stratified():
    assert default_clip(1) == (1.0, 1.0) and default_clip(4) == (0.45, 0.95) and default_clip(16) == (0.3, 0.8)
    method = make_bd3(16, block_size=4)
    assert method.clip == (0.45, 0.95)
    seen = []
    method.nelbo = lambda x, t, generator=None: (seen.append(t.clone()), torch.zeros(x.shape[0]))[1]
    x = torch.randint(0, V, (8, 16), generator=gen(1))
    torch.manual_seed(2)
    method.training_step("nelbo", x, 0)
    t = seen[0]
    assert t.shape == (8, 4) and (t >= 0.45).all() and (t <= 0.95).all()
    # one stratum of [beta, omega] per block of the batch, in order (row-major)
    stratum = torch.floor((t.flatten() - 0.45) / 0.5 * 32)
    assert torch.equal(stratum, torch.arange(32, dtype=torch.float64))
    custom = make_bd3(16, block_size=4, clip_min=0.0, clip_max=1.0)
    custom.nelbo = method.nelbo
    custom.training_step("nelbo", x, 0)
    assert (seen[1] > 0).all() and (seen[1] <= 1).all() and float(seen[1].min()) < 0.05


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("block_size,nfe", [(1, 3), (4, 5), (8, 24), (16, 4)])
def test_kv_cached_sampling_gives_the_uncached_tokens(block_size, nfe):
    length = 16
    results = {}
    for kv in (True, False):
        method = make_bd3(length, block_size=block_size, kv_cache=kv)
        calls = []
        forward = method.net.forward
        method.net.forward = lambda *a, **k: (calls.append(a[0].shape[1]), forward(*a, **k))[1]
        out = method.sample(6, "ancestral", nfe, gen(5))
        results[kv] = (out, len(calls), calls, method.last_sampling)
    cached, uncached = results[True], results[False]
    assert torch.equal(cached[0], uncached[0])
    assert (cached[0] >= 0).all() and (cached[0] < V).all()  # no [MASK] left
    assert cached[1] == uncached[1] == cached[3]["network_calls"]
    assert cached[1] <= nfe * (length // block_size)  # at most nfe calls per block
    # the cached calls feed one block (two at a block's first call, for the finished one's keys)
    assert max(cached[2]) <= 2 * block_size and max(uncached[2]) == length
    # caching: a row is re-run only after its block changed with masks left, so each row
    # costs at most L' evaluations per block, L in all (a call serves the rows that need it)
    assert cached[3]["evals_per_sample"] <= min(nfe * (length // block_size), length)


def test_cached_block_predictions_equal_the_full_prefix_pass():
    method = make_bd3(16, block_size=4)
    x = torch.randint(0, V, (5, 16), generator=gen(2))
    x[:, 8:12] = noisy(x[:, 8:12], 0.5, 3, V)  # block 2 partly masked, blocks 0-1 clean
    rows = torch.arange(5)
    with torch.no_grad():
        full = method._block_log_probs(x, 2, rows, None, True)
        cache = KVCache()
        method._block_log_probs(x, 1, rows, cache, True)  # stores block 0
        first = method._block_log_probs(x, 2, rows, cache, True)  # stores block 1
        assert cache.length == 8
        later = method._block_log_probs(x, 2, torch.tensor([1, 3]), cache, False)  # a subset of rows
    torch.testing.assert_close(first, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(later, full[[1, 3]], rtol=1e-4, atol=1e-4)


def test_host_counts_the_calls_the_sampler_declares():
    method = make_bd3(16, block_size=4)
    info = method.sampler("ancestral")
    assert info.adjustable_nfe and info.calls_per_step == 4  # one call per block and step at most
    for nfe in (1, 3, 10):
        counted = counted_nfe(method, "ancestral", nfe, gen(nfe))
        assert counted == method.last_sampling["network_calls"] <= min(nfe, 4) * 4
        check_nfe(method, "ancestral", nfe, counted)


class ConstantNet(nn.Module):
    """Predicts fixed logits per absolute position, whatever it sees (any call signature)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x, attn_mask=None, positions=None, cache=None, store=0):
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + x.shape[1])
        return self.logits[positions].expand(x.shape[0], -1, -1)


@pytest.mark.parametrize("kv", [True, False])
def test_variable_length_generation_stops_at_the_end_token(kv):
    length, eos = 16, 0
    logits = torch.full((length, 5), -30.0)
    logits[:, 1] = 0.0  # token 1 everywhere...
    logits[6] = -30.0
    logits[6, eos] = 0.0  # ...except the end token at position 6 (block 1 of 4)
    method = BD3LM(text_spec(length, 5), model_size="tiny", block_size=4, eos_id=eos, kv_cache=kv)
    method.net = ConstantNet(logits)
    out = method.sample(3, "ancestral", 4, gen(1))
    expected = torch.tensor([1] * 6 + [eos] * 10).expand(3, -1)
    assert torch.equal(out, expected)
    assert method.last_sampling["network_calls"] <= 2 * 4  # two blocks sampled, then it stopped
    fixed = BD3LM(text_spec(length, 5), model_size="tiny", block_size=4, kv_cache=kv)
    fixed.net = ConstantNet(logits)
    out = fixed.sample(3, "ancestral", 4, gen(1))
    assert (out[:, 7:] == 1).all() and (out[:, 6] == eos).all()  # no end token: the whole window


def test_sampler_draws_the_denoiser_distribution():
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    method = BD3LM(text_spec(8, 4), model_size="tiny", block_size=4)
    method.net = ConstantNet(p.log().float().expand(8, -1))
    out = method.sample(3000, "ancestral", 6, gen(2))
    freq = torch.bincount(out.flatten(), minlength=4).double() / out.numel()
    assert ((freq - p).abs() < 5 * (p * (1 - p) / out.numel()).sqrt()).all(), freq


# ------------------------------------------------------------------ determinism and errors


def test_deterministic_given_the_generator():
    method = make_bd3(16, block_size=4)
    x = torch.randint(0, V, (6, 16), generator=gen(0))
    a, b, c = (method.sample(4, "ancestral", 3, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    la, lb, lc = (method.log_likelihood(x, gen(s)) for s in (1, 1, 2))
    assert la.shape == (6,) and torch.equal(la, lb) and not torch.equal(la, lc) and (la < 0).all()


def test_bad_input_gives_one_line_errors():
    with pytest.raises(MethodError, match="block_size must divide the window length 16, got 5"):
        BD3LM(text_spec(16), model_size="tiny", block_size=5)
    with pytest.raises(MethodError, match="set both clip_min and clip_max"):
        BD3LM(text_spec(16), model_size="tiny", clip_min=0.2)
    with pytest.raises(MethodError, match=r"need 0 <= clip_min <= clip_max <= 1"):
        BD3LM(text_spec(16), model_size="tiny", clip_min=0.8, clip_max=0.2)
    with pytest.raises(MethodError, match="eos_id must be a token id"):
        BD3LM(text_spec(16), model_size="tiny", eos_id=V)
    method = make_bd3(16)
    with pytest.raises(MethodError, match="no sampler 'ancestal'"):
        method.sample(2, "ancestal", 4, gen())
    with pytest.raises(MethodError, match="need nfe >= 1"):
        method.sample(2, "ancestral", 0, gen())
    with pytest.raises(MethodError, match=r"shape \(N, 16\)"):
        method.log_likelihood(torch.zeros(2, 9, dtype=torch.long), gen())
    with pytest.raises(MethodError, match="does not support 'toy2d'"):
        BD3LM(DataSpec(name="t", modality="toy2d", shape=(2,)))


def test_registered_with_its_claims():
    from gmbench.plugins import Registries

    reg = Registries()
    assert reg.methods.get("bd3lm") is BD3LM
    claims = {n: reg.claims.get(n) for n in reg.claims.names()}
    ordering = {name: (str(c.a), str(c.b)) for name, c in claims.items()
                if c.paper == "2503.09573" and c.metric == "test_bpc"}
    assert ordering == {
        "ar-beats-bd3lm-synthlang-bpc": ("ar", "bd3lm"),
        "bd3lm-beats-mdlm-synthlang-bpc": ("bd3lm", "mdlm"),
        "bd3lm-block4-beats-block16-synthlang-bpc": ("bd3lm", "bd3lm[block_size=16]"),
    }
    # the sample-quality claims (registered by ar, BD3-LM T7): bd3lm's gen. ppl against steps and AR
    samples = {name: (str(c.a), str(c.b)) for name, c in claims.items() if c.metric == "gen_ppl" and "bd3lm" in name}
    assert samples == {"bd3lm-samples-improve-with-steps-synthlang": ("bd3lm ancestral", "None"),
                       "ar-samples-beat-bd3lm-at-100-steps-synthlang": ("ar ancestral@64", "bd3lm ancestral@100")}
    assert BD3LM(text_spec(64), model_size="tiny").block_size == 4  # the label "bd3lm" is block size 4


# ------------------------------------------------------------------ it learns


def test_learns_synthlang_beyond_the_unigram_baseline():
    # mdlm's and ar's learning test: 16-character windows, the whole smoke budget. Each step
    # runs x_t ⊕ x (twice mdlm's tokens), so bd3lm takes about half mdlm's steps.
    data = SyntheticLanguage(seq_len=16, n_train=4000, n_test=500)
    torch.manual_seed(0)
    method = BD3LM(data.spec(), model_size=SMOKE.model_size)
    reports = train(method, data.split("train").x, SMOKE, "text", gen(0))
    assert reports[0].steps > 250
    scores = HeldOutLikelihood().score_model(method, EvalContext(dataset=data, n_samples=0, seed=0))
    counts = torch.bincount(data.split("train").x.flatten(), minlength=V).double()
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * p[p > 0].log2()).sum())
    assert scores["test_bpc"] < unigram - 1.0, (scores, unigram)
    # a bound: not below the source's own code length beyond the Monte Carlo noise
    assert scores["test_bpc_gap"] > -4 * scores["_stderr"], scores


class TestBD3LMConforms(MethodConformance):
    """The shared contract suite on synthlang (shapes, budget, determinism, checkpoints)."""

    method = BD3LM
    load_entrypoints = False
