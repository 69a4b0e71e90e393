"""Tests for the `ar` plugin: a causal transformer language model (arXiv 1706.03762, the GPT recipe).

Checked: the KV-cached decoder gives the full forward's logits at every position and
the same tokens as uncached sampling from the same seed, at a fraction of its FLOPs;
the likelihood is the chain rule (equal to per-prefix forwards, normalised over every
sequence of a small vocabulary, exactly ``-L log V`` for zero logits); the sampler draws
from the temperature / top-p distribution it states; the host counts one network call
per token (NFE = L); it learns synthlang at the smoke budget; the conformance kit.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gmbench.backbones import Transformer, count_parameters
from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.evaluate import check_nfe, counted_nfe
from gmbench.method import MethodError
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.discrete_diffusion.ar import AR, CausalLM
from gmbench_methods.discrete_diffusion.mdlm import MDLM

V = 27


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def text_spec(length: int, vocab: int = V) -> DataSpec:
    return DataSpec(name="t", modality="text", shape=(length,), vocab_size=vocab)


def make_ar(length: int = 16, vocab: int = V, size: str = "tiny", seed: int = 0, **kw) -> AR:
    torch.manual_seed(seed)
    method = AR(text_spec(length, vocab), model_size=size, **kw)
    # A freshly initialised head gives nearly uniform logits; scale it up so that the
    # next-token distributions are peaked and depend strongly on the context, which
    # makes a cache that mixed positions up or dropped context change the tokens.
    with torch.no_grad():
        method.net.backbone.out.weight.mul_(10.0)
    method.train(False)
    return method


def fixed_distribution_ar(probs: torch.Tensor, length: int, **kw) -> AR:
    """An AR whose every next-token distribution is ``probs`` (zero head weight, bias = log probs)."""
    method = make_ar(length, vocab=len(probs), **kw)
    with torch.no_grad():
        method.net.backbone.out.weight.zero_()
        method.net.backbone.out.bias.copy_(probs.log().float())
    return method


# ------------------------------------------------------------------ the KV cache


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_cached_decoding_gives_the_full_forward_logits_at_every_position(size):
    method = make_ar(24, size=size)
    x = torch.randint(0, V, (5, 24), generator=gen(1))
    with torch.no_grad():
        full = method.logits(x)
        cache, inputs = method.net.new_cache(), method._inputs(x)
        stepped = torch.cat([method.net(inputs[:, i : i + 1], cache) for i in range(24)], dim=1)
    assert cache.length == 24
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="after 24 cached positions exceeds seq_len=24"):
        method.net(inputs[:, :1], cache)


def test_cached_decoding_with_learned_positions():
    # the decoder's other position branch: learned absolute embeddings (pos[p] added at p)
    torch.manual_seed(0)
    lm = CausalLM(V, 12, "tiny")
    lm.backbone = Transformer(V + 1, 12, out_dim=V, size="tiny", causal=True, positions="learned")
    lm.eval()
    ids = torch.randint(0, V + 1, (3, 12), generator=gen(2))
    with torch.no_grad():
        cache = lm.new_cache()
        stepped = torch.cat([lm(ids[:, i : i + 1], cache) for i in range(12)], dim=1)
        torch.testing.assert_close(stepped, lm(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hparams", [{}, {"temperature": 0.7, "top_p": 0.9}])
def test_cached_sampler_gives_the_same_tokens_as_the_uncached_one(hparams):
    cached = make_ar(32, **hparams)
    plain = make_ar(32, cache=False, **hparams)
    a = cached.sample(64, "ancestral", 32, gen(3))
    b = plain.sample(64, "ancestral", 32, gen(3))
    assert a.shape == (64, 32) and a.dtype == torch.long
    assert torch.equal(a, b)
    # a real check: many tokens, mostly distinct rows (a sampler stuck on one path would pass trivially)
    assert len(torch.unique(a)) > 5 and len(torch.unique(a, dim=0)) > 48
    assert not torch.equal(a, cached.sample(64, "ancestral", 32, gen(4)))


def test_cached_decoding_under_the_hosts_bf16_autocast():
    # the host may sample under bf16 autocast (gmbench.execution.precision): the cache then
    # holds bf16 keys and values, the attention reads them in the queries' dtype
    from gmbench.execution.precision import autocast

    method = make_ar(16)
    x = torch.randint(0, V, (4, 16), generator=gen(12))
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        cache, inputs = method.net.new_cache(), method._inputs(x)
        stepped = torch.cat([method.net(inputs[:, i : i + 1], cache) for i in range(16)], dim=1)
        out = method.sample(8, "ancestral", 16, gen(13))
    assert cache.keys[0].dtype == torch.bfloat16
    torch.testing.assert_close(stepped.float(), method.logits(x), rtol=0.05, atol=0.1)
    assert out.shape == (8, 16) and bool(((out >= 0) & (out < V)).all())


def test_cache_saves_the_prefix_recomputation():
    # FLOPs, not seconds: uncached step i re-runs a prefix of i + 1 positions, so the
    # uncached sampler costs about (L + 1) / 2 times the cached one (attention aside)
    flops = {}
    for cache in (True, False):
        method = make_ar(32, cache=cache)
        with FlopCounterMode(display=False) as counter:
            method.sample(8, "ancestral", 32, gen(5))
        flops[cache] = counter.get_total_flops()
    assert flops[True] > 0 and flops[False] > 8 * flops[True], flops


# ------------------------------------------------------------------ NFE


@pytest.mark.parametrize("cache", [True, False])
def test_host_counts_one_network_call_per_token(cache):
    method = make_ar(20, cache=cache)
    info = method.sampler("ancestral")
    assert not info.adjustable_nfe and info.default_nfe == 20  # the instance declares its data's L
    counted = counted_nfe(method, "ancestral", 20, gen(6))
    assert counted == 20 and method.last_sampling["network_calls"] == 20
    check_nfe(method, "ancestral", info.default_nfe, counted)  # the host's check passes
    assert AR.samplers[0].default_nfe == 64  # the class shows synthlang's default window


# ------------------------------------------------------------------ the likelihood


def test_likelihood_is_the_chain_rule_of_per_prefix_forwards():
    method = make_ar(10)
    x = torch.randint(0, V, (6, 10), generator=gen(7))
    ll = method.log_likelihood(x)
    assert ll.shape == (6,) and ll.dtype == torch.float64
    # log p(x_i | BOS, x_<i) from a plain forward over the prefix alone: no future token seen
    by_prefix = torch.zeros(6, dtype=torch.float64)
    bos = torch.full((6, 1), V, dtype=torch.long)
    with torch.no_grad():
        for i in range(10):
            logits = method.net.backbone(torch.cat([bos, x[:, :i]], dim=1))[:, -1]
            by_prefix += logits.double().log_softmax(-1).gather(-1, x[:, i : i + 1]).squeeze(1)
    torch.testing.assert_close(ll, by_prefix, rtol=1e-5, atol=1e-4)
    assert torch.equal(method.log_likelihood(x, gen(1)), method.log_likelihood(x, gen(2)))  # exact: no randomness


def test_likelihood_is_normalised_over_every_sequence():
    # V = 3, L = 4: the 81 sequences' probabilities sum to 1, as an exact likelihood must
    method = make_ar(4, vocab=3)
    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    total = method.log_likelihood(every).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-6)
    assert float(method.log_likelihood(every).exp().max()) > 3 / 81  # peaked, so the sum is a real check


def test_zero_logits_give_L_log_V_nats():
    method = fixed_distribution_ar(torch.full((V,), 1.0 / V, dtype=torch.float64), 16)
    with torch.no_grad():
        method.net.backbone.out.bias.zero_()  # logits exactly 0
    ll = method.log_likelihood(torch.randint(0, V, (9, 16), generator=gen(8)))
    assert (ll - (-16 * math.log(V))).abs().max() < 1e-12


# ------------------------------------------------------------------ temperature, top-p, float64 draws


def test_next_token_distribution_applies_temperature_then_top_p():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    logits = p.log()[None]
    torch.testing.assert_close(make_ar(4, vocab=4).next_token_probs(logits), p[None])
    hot = make_ar(4, vocab=4, temperature=2.0).next_token_probs(logits)
    torch.testing.assert_close(hot, (p.sqrt() / p.sqrt().sum())[None])
    nucleus = make_ar(4, vocab=4, top_p=0.7).next_token_probs(logits)  # 0.5 + 0.3 reach 0.7
    torch.testing.assert_close(nucleus, torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64))
    only_top = make_ar(4, vocab=4, top_p=0.5).next_token_probs(logits)  # 0.5 alone reaches 0.5
    torch.testing.assert_close(only_top, torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    assert nucleus.dtype == torch.float64


def test_sampler_draws_the_stated_distribution_in_float64():
    p = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08], dtype=torch.float64)
    method = fixed_distribution_ar(p, 8)
    assert method.sampling_precision == "float64"
    out = method.sample(2000, "ancestral", 8, gen(9))
    freq = torch.bincount(out.flatten(), minlength=5).double() / out.numel()
    se = (p * (1 - p) / out.numel()).sqrt()
    assert ((freq - p).abs() < 5 * se).all(), (freq, p)
    truncated = fixed_distribution_ar(p, 8, top_p=0.6).sample(2000, "ancestral", 8, gen(9))
    assert set(truncated.unique().tolist()) == {0, 1}  # 0.4 + 0.25 reach 0.6: the rest never drawn


# ------------------------------------------------------------------ the same network as mdlm


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_same_backbone_preset_as_mdlm(size):
    ar = AR(text_spec(64), model_size=size)
    mdlm = MDLM(text_spec(64), model_size=size)
    assert count_parameters(ar.net) == count_parameters(mdlm.net)  # V + 1 ids (BOS / [MASK]), V outputs
    assert ar.net.backbone.causal and not mdlm.net.causal
    assert ar.backbone().startswith(f"Transformer({size}, ")


# ------------------------------------------------------------------ errors, registration


def test_bad_input_gives_one_line_errors():
    method = make_ar(8)
    with pytest.raises(MethodError, match="no sampler 'ancestal'"):
        method.sample(2, "ancestal", 8, gen())
    with pytest.raises(MethodError, match="nfe must be the window length 8, got 4"):
        method.sample(2, "ancestral", 4, gen())
    with pytest.raises(MethodError, match=r"token ids must lie in 0\.\.26"):
        method.log_likelihood(torch.full((2, 8), V))
    with pytest.raises(MethodError, match=r"shape \(N, 8\)"):
        method.log_likelihood(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(MethodError, match="does not support 'toy2d'"):
        AR(DataSpec(name="t", modality="toy2d", shape=(2,)))
    for t in (0.0, -1.0, float("inf")):
        with pytest.raises(MethodError, match="temperature must be a finite number > 0"):
            AR(text_spec(8), model_size="tiny", temperature=t)
    for p in (0.0, 1.5):
        with pytest.raises(MethodError, match=r"top_p must be in \(0, 1\]"):
            AR(text_spec(8), model_size="tiny", top_p=p)


def test_registered_through_the_entry_point_with_its_claim():
    from gmbench.plugins import Registries, make_plugin_manager

    reg = Registries(make_plugin_manager())
    assert reg.methods.get("ar") is AR
    claim = reg.claims.get("ar-beats-mdlm-synthlang-bpc")
    assert (claim.a.method, claim.b.method, claim.metric, claim.relation) == ("ar", "mdlm", "test_bpc", "better")


# ------------------------------------------------------------------ it learns, through the host


def test_learns_synthlang_at_the_smoke_budget():
    # The same data and budget as mdlm's learning test (16-character windows, ~900 steps).
    # Measured: 1.19 bits/char against mdlm's bound 2.48, the unigram 4.51 and the
    # source's own 1.07 on these test windows.
    data = SyntheticLanguage(seq_len=16, n_train=4000, n_test=500)
    torch.manual_seed(0)
    method = AR(data.spec(), model_size=SMOKE.model_size)
    reports = train(method, data.split("train").x, SMOKE, "text", gen(0))
    assert reports[0].steps > 500
    scores = HeldOutLikelihood().score_model(method, EvalContext(dataset=data, n_samples=0, seed=0))
    bpc = scores["test_bpc"]
    counts = torch.bincount(data.split("train").x.flatten(), minlength=V).double()
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * p[p > 0].log2()).sum())
    assert bpc < unigram - 2.5, (bpc, unigram)
    # exact: it cannot beat the source's own code length beyond sampling noise of the test set
    assert scores["test_bpc_gap"] > -4 * scores["_stderr"], scores


class TestARConforms(MethodConformance):
    """The shared contract suite (shapes, budget, determinism, checkpoints)."""

    method = AR
    load_entrypoints = False
