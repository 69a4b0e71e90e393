"""Tests of the ``mar`` plugin (arXiv 2406.11838): the masking schedules against their closed
forms, the per-token diffusion loss and sampler against the forward process, the generation
orders, the call audit over both networks, the contract and learning at a small budget."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.digits import Digits
from gmbench.evaluate import NFEMismatch, check_nfe, counted_nfe
from gmbench.method import MethodError, SamplerInfo
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.autoregressive import mar as mar_module
from gmbench_methods.autoregressive.diffloss import DiffusionHead, diffusion_loss, sample_tokens
from gmbench_methods.autoregressive.mar import (CE_SAMPLERS, LATENT_DIFFUSION_SAMPLERS, MAR, cosine_mask_ratio, generation_order, masked_counts, patchify,
                                                tokens_per_step, truncnorm_mask_ratio, unpatchify)
from gmbench_methods.diffusion.schedules import NoiseSchedule, space_timesteps

DIGITS = DataSpec(name="digits", modality="image", shape=(1, 8, 8), levels=17, value_range=(-1.0, 1.0))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ tokens


def test_patchify_is_raster_patches_and_round_trips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    t = patchify(x, 2)
    assert t.shape == (2, 16, 12)
    # token 1 (first row, second patch) of image 0: channel 0's pixels (0,2),(0,3),(1,2),(1,3) first
    assert t[0, 1, :4].tolist() == [x[0, 0, 0, 2], x[0, 0, 0, 3], x[0, 0, 1, 2], x[0, 0, 1, 3]]
    assert t[0, 4, :4].tolist() == [x[0, 0, 2, 0], x[0, 0, 2, 1], x[0, 0, 3, 0], x[0, 0, 3, 1]]
    assert torch.equal(unpatchify(t, (3, 8, 8), 2), x)
    assert torch.equal(unpatchify(patchify(x, 4), (3, 8, 8), 4), x)


# ------------------------------------------------------------------ masking schedules


@pytest.mark.parametrize("L", [1, 4, 16, 64, 256])
def test_generation_counts_sum_to_the_token_count(L):
    for K in range(1, L + 9):
        n = tokens_per_step(L, K)
        m = masked_counts(L, K)
        assert len(n) == K and sum(n) == L and m[0] == L and m[-1] == 0
        assert all(a >= b for a, b in zip(m, m[1:]))
        if K <= L:  # at least one token per step
            assert min(n) >= 1
        else:  # K > L: exactly L steps generate (one each), the rest make no call
            assert sum(1 for v in n if v) == L and max(n) == 1


def test_generation_counts_follow_the_cosine_closed_form():
    # where the clamps are inactive, m_k = floor(L cos(pi k / (2K)))
    L, K = 256, 8
    m = masked_counts(L, K)
    for k in range(1, K):
        assert m[k] == math.floor(L * math.cos(math.pi * k / (2 * K)))
    # cosine shape: few tokens early, more later (monotone up to floor rounding)
    n = tokens_per_step(L, K)
    assert n[0] < n[-1] and all(b >= a - 1 for a, b in zip(n, n[1:]))
    assert masked_counts(16, 10) == [16, 15, 14, 13, 12, 11, 9, 7, 4, 2, 0]
    assert tokens_per_step(16, 1) == [16]


def test_truncated_gaussian_mask_ratio_inverts_its_cdf():
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    lo, hi = phi((0.7 - 1) / 0.25), phi(0.0)
    u = torch.linspace(0, 1, 41, dtype=torch.float64)
    r = truncnorm_mask_ratio(u)
    assert abs(float(r[0]) - 0.7) < 1e-9 and abs(float(r[-1]) - 1.0) < 1e-9
    for ui, ri in zip(u.tolist(), r.tolist()):
        cdf = (phi((ri - 1) / 0.25) - lo) / (hi - lo)
        assert abs(cdf - ui) < 1e-9
    # mean of N(1, 0.25^2) truncated to [0.7, 1]: 1 - 0.25 (pdf(-1.2) - pdf(0)) / (Phi(0) - Phi(-1.2))
    pdf = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    mean = 1 + 0.25 * (pdf(-1.2) - pdf(0.0)) / (hi - lo)
    draws = truncnorm_mask_ratio(torch.rand(200_000, generator=gen(0), dtype=torch.float64))
    assert abs(float(draws.mean()) - mean) < 2e-3


def _truncnorm_cdf(r: float) -> float:
    """CDF of N(1, 0.25^2) truncated to [0.7, 1], written out from Phi."""
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    lo, hi = phi((0.7 - 1) / 0.25), phi(0.0)
    return min(1.0, max(0.0, (phi((r - 1) / 0.25) - lo) / (hi - lo)))


def _sorted_rows(t: torch.Tensor) -> list:
    return sorted(map(tuple, t.tolist()))


@pytest.mark.parametrize("order, steps", [("random", 400), ("raster", 20)])
def test_training_masks_the_last_m_of_each_order_with_one_ratio_per_batch(order, steps, monkeypatch):
    """One ratio r per batch, m = ceil(r L) masked: the last m of each image's generation order
    (the known tokens are the prefix generation fills first); the diffusion loss gets exactly
    the masked tokens, each with the transformer's output at its own position."""
    method = MAR(DIGITS, model_size="tiny", order=order, ema_decay=None)
    L, rec = method.L, {}
    real_ratio, real_order, real_loss = mar_module.truncnorm_mask_ratio, mar_module.generation_order, mar_module.diffusion_loss

    def ratio(u, *a, **k):
        r = real_ratio(u, *a, **k)
        rec.setdefault("ratio", []).append((u.clone(), r.clone()))
        return r

    def orders(*a, **k):
        o = real_order(*a, **k)
        rec.setdefault("order", []).append(o.clone())
        return o

    def loss(head, schedule, x, z, mul, *a, **k):
        rec.setdefault("loss", []).append((head, x.clone(), z.clone(), mul))
        return real_loss(head, schedule, x, z, mul, *a, **k)

    monkeypatch.setattr(mar_module, "truncnorm_mask_ratio", ratio)
    monkeypatch.setattr(mar_module, "generation_order", orders)
    monkeypatch.setattr(mar_module, "diffusion_loss", loss)
    method.net.register_forward_hook(lambda mod, args, out: rec.setdefault("net", []).append((args[0], args[1], out)))
    torch.manual_seed(0)
    batch = torch.rand(4, 1, 8, 8) * 2 - 1  # distinct tokens: a token's values identify it
    x = patchify(batch, 2)
    ms = []
    with torch.no_grad():
        for step in range(steps):
            rec.clear()
            method.training_step("mar", batch, step)
            (u, r), = rec["ratio"]  # one ratio for the whole batch
            assert u.numel() == 1 and 0.0 <= float(u) <= 1.0
            m = math.ceil(float(r) * L)
            ms.append(m)
            (o,), ((tokens, known, z),) = rec["order"], rec["net"]
            if order == "raster":
                assert torch.equal(o, torch.arange(L).expand(4, L))
            # known: exactly the first L - m of each order, at their true values
            want = torch.zeros(4, L, dtype=torch.bool).scatter(1, o[:, :L - m], True)
            assert torch.equal(known, want), (step, m, known.sum(1).tolist())
            assert torch.equal(tokens[known], x[known])
            # the loss: exactly the masked tokens, each paired with z at its own position
            (head, x_m, z_m, mul), = rec["loss"]
            assert head is method.head and mul == method.mul and x_m.shape == (4 * m, method.d)
            masked = o[:, L - m:]
            pairs = torch.cat([x.gather(1, masked[..., None].expand(-1, -1, method.d)),
                               z.gather(1, masked[..., None].expand(-1, -1, z.shape[-1]))], -1).flatten(0, 1)
            assert _sorted_rows(torch.cat([x_m, z_m], -1)) == _sorted_rows(pairs), (step, m)
    if order == "random":  # m's distribution: P(m = k) = F(k / L) - F((k - 1) / L), F the truncated CDF
        for k in range(1, L + 1):
            p = _truncnorm_cdf(k / L) - _truncnorm_cdf((k - 1) / L)
            freq = ms.count(k) / steps
            assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / steps) + 1e-9, (k, freq, p)
        assert set(ms) == {12, 13, 14, 15, 16}  # ceil(16 r), r in [0.7, 1]


def test_cosine_mask_schedule_draws_m_from_its_closed_form(monkeypatch):
    """``mask_schedule="cosine"``: r = cos(pi u / 2), u ~ U(0, 1), so P(r <= c) = 1 - (2 / pi)
    arccos(c) and E[r] = 2 / pi; a training step masks m = ceil(r L) tokens (at least one)."""
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(cosine_mask_ratio(u), torch.cos(math.pi / 2 * u), atol=0, rtol=1e-15)
    draws = cosine_mask_ratio(torch.rand(200_000, generator=gen(0), dtype=torch.float64))
    assert abs(float(draws.mean()) - 2 / math.pi) < 3e-3
    method = MAR(DIGITS, model_size="tiny", mask_schedule="cosine", ema_decay=None)
    L, ms, steps = method.L, [], 400
    monkeypatch.setattr(mar_module, "diffusion_loss",
                        lambda head, schedule, x, z, mul, *a, **k: ms.append(x.shape[0] // 4) or torch.zeros(()))
    torch.manual_seed(0)
    batch = torch.rand(4, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        for step in range(steps):
            method.training_step("mar", batch, step)
    cdf = lambda c: 1 - 2 / math.pi * math.acos(min(1.0, max(0.0, c)))  # noqa: E731
    for k in range(1, L + 1):
        p = cdf(k / L) - cdf((k - 1) / L)
        freq = ms.count(k) / steps
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / steps) + 1e-9, (k, freq, p)
    assert min(ms) < 12  # the truncated Gaussian (the default) never masks fewer than 12 of 16


# ------------------------------------------------------------------ orders


def test_random_order_is_a_permutation_and_raster_the_identity():
    o = generation_order(64, 16, "random", gen(0))
    assert torch.equal(o.sort(dim=1).values, torch.arange(16).expand(64, 16))
    assert len({tuple(r) for r in o.tolist()}) > 60  # rows differ
    assert torch.equal(o, generation_order(64, 16, "random", gen(0)))  # seeded
    assert torch.equal(generation_order(5, 16, "raster", gen(0)), torch.arange(16).expand(5, 16))


def test_raster_sampling_fills_tokens_in_raster_order():
    method = MAR(DIGITS, model_size="tiny", order="raster", ema_decay=None)
    seen = []
    method.net.register_forward_pre_hook(lambda mod, args: seen.append(args[1][0].clone()))
    method.sample(1, "ddpm-s20", 16, gen(0))
    assert len(seen) == 16
    for k, known in enumerate(seen):  # before step k the first k raster tokens are known
        assert known.tolist() == [i < k for i in range(16)]


def test_random_order_generation_follows_the_masked_count_schedule_and_never_overwrites():
    """Several tokens per step (L = 16, K = 5): before step k, L - m_k tokens are known,
    m = masked_counts(16, 5); generated tokens never change; the last step fills the rest."""
    method = MAR(DIGITS, model_size="tiny", ema_decay=None)  # order="random"
    L, K, n, S = 16, 5, 6, 20
    m = masked_counts(L, K)
    assert m == [16, 15, 12, 9, 4, 0]
    seen, head_rows = [], []
    method.net.register_forward_pre_hook(lambda mod, args: seen.append((args[0].clone(), args[1].clone())))
    method.head.register_forward_pre_hook(lambda mod, args: head_rows.append(args[0].shape[0]))
    # the zero-initialised head with clip_denoised ends every token at its clipped x0: in range,
    # so the sample's clamp changes nothing and patchify recovers the final tokens
    final = patchify(method.sample(n, "ddpm-s20", K, gen(0)), 2)
    assert len(seen) == K
    for k, (tokens, known) in enumerate(seen):
        assert known.sum(1).tolist() == [L - m[k]] * n, (k, known.sum(1).tolist())
        if k:  # once generated, a token stays known with the same value
            prev_tokens, prev_known = seen[k - 1]
            assert bool((known | ~prev_known).all()), k
            assert torch.equal(tokens[prev_known], prev_tokens[prev_known]), f"step {k} overwrote a generated token"
    last_tokens, last_known = seen[-1]
    assert torch.equal(final[last_known], last_tokens[last_known]), "the last step overwrote a generated token"
    assert bool((final.abs().sum(-1) > 0).all()), "a token was never generated"
    # each step's head calls carry exactly that step's new tokens: n * n_k rows, S calls
    assert head_rows == [n * c for c in tokens_per_step(L, K) for _ in range(S)]
    assert tokens_per_step(L, K)[-1] == 4
    # a random order: the first token generated differs between images
    first = [tuple(row.nonzero().flatten().tolist()) for row in seen[1][1]]
    assert len(set(first)) > 1


# ------------------------------------------------------------------ the diffusion loss


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, xt, t, z):
        self.calls.append((xt.clone(), t.clone(), z.clone()))
        return torch.zeros_like(xt)


def test_diffusion_loss_uses_the_cosine_forward_process_closed_form():
    T, s, mul = 1000, 0.008, 3
    schedule = NoiseSchedule.cosine(T)
    x, z = torch.randn(5, 4, generator=gen(1)), torch.randn(5, 7, generator=gen(2))
    head = _Recorder()
    loss = diffusion_loss(head, schedule, x, z, mul, gen(3))
    (xt, t, zz), = head.calls
    g = gen(3)  # the same draws, in the same order
    t_ref = torch.randint(1, T + 1, (15,), generator=g)
    eps = torch.randn(15, 4, generator=g)
    assert torch.equal(t, t_ref) and torch.equal(zz, z.repeat(mul, 1))
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = torch.tensor([f(v) / f(0) for v in t_ref.tolist()])[:, None]
    assert torch.allclose(xt, abar.sqrt() * x.repeat(mul, 1) + (1 - abar).sqrt() * eps, atol=1e-6)
    assert torch.allclose(loss, eps.pow(2).mean())  # eps_theta = 0: the loss is E||eps||^2


def test_head_starts_at_zero_and_sees_time_and_condition():
    head = DiffusionHead(4, 8, 32, depth=3)
    xt, t, z = torch.randn(6, 4), torch.randint(1, 1001, (6,)), torch.randn(6, 8)
    assert head(xt, t, z).abs().max() == 0  # adaLN-Zero output layer
    nn.init.normal_(head.out.weight)
    for block in head.blocks:
        nn.init.normal_(block.ada[1].weight, std=0.1)
    nn.init.normal_(head.ada_out[1].weight, std=0.1)
    a = head(xt, t, z)
    assert not torch.allclose(a, head(xt, t, z + 1)) and not torch.allclose(a, head(xt, t + 100, z))


class _OracleHead(nn.Module):
    """The exact noise for data concentrated at ``c``: eps = (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t)."""

    def __init__(self, schedule, c):
        super().__init__()
        self.schedule, self.c = schedule, c

    def forward(self, xt, t, z):
        return self.schedule.predict_eps(xt, t, self.c.expand_as(xt))


@pytest.mark.parametrize("steps", [1, 7, 100])
def test_ancestral_token_sampler_recovers_a_point_mass(steps):
    schedule = NoiseSchedule.cosine(1000)
    c = torch.tensor([0.3, -0.5, 0.9, 0.0], dtype=torch.float64)  # float64: abar_T is ~1e-9
    z = torch.zeros(10, 3, dtype=torch.float64)
    x = sample_tokens(_OracleHead(schedule, c), schedule, z, 4, steps, 1.0, gen(0))
    assert x.dtype == torch.float64 and torch.allclose(x, c.expand(10, 4), atol=1e-6)


class _LinearHead(nn.Module):
    """A non-zero stub ``eps_theta(x_t | t, z) = 0.3 x_t + 0.1``: the no-noise chain then depends
    on every step's ``abar``, so a wrong respacing changes it."""

    def forward(self, xt, t, z):
        return 0.3 * xt + 0.1


def _ancestral_by_hand(schedule, taus, xT, deltas, tau):
    """DDPM's ancestral chain written out from ``abar`` (float64): predicted ``x_0``, the
    respaced posterior ``q(x_s | x_t, x_0)`` and ``tau`` times its standard deviation on the noise."""
    abar = schedule.abar
    x = xT
    for k, (t, s) in enumerate(zip(reversed(taus), reversed([0] + taus[:-1]))):
        ab_t, ab_s = float(abar[t]), float(abar[s])
        eps = 0.3 * x + 0.1
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        beta = 1 - ab_t / ab_s
        mean = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * x
        var = (1 - ab_s) / (1 - ab_t) * beta
        x = mean if s == 0 else mean + tau * math.sqrt(var) * deltas[k]
    return x


def test_temperature_scales_only_the_noise():
    schedule = NoiseSchedule.cosine(1000)
    taus = space_timesteps(1000, 5).tolist()
    assert taus == [1, 251, 501, 750, 1000]  # iDDPM's respacing rule, 1-based
    z = torch.zeros(4, 2, dtype=torch.float64)  # float64: the chain runs in z's dtype
    out = {tau: sample_tokens(_LinearHead(), schedule, z, 3, 5, tau, gen(0)) for tau in (0.0, 0.5, 1.0)}
    # the same draws, in the sampler's order: x_T, then one noise per step but the last (s = 0)
    g = gen(0)
    xT = torch.randn(4, 3, generator=g).double()
    deltas = [torch.randn(4, 3, generator=g).double() for _ in range(4)]
    for tau, x in out.items():  # (the stub is no denoiser: x_0 predicted at t = T is ~1e4)
        ref = _ancestral_by_hand(schedule, taus, xT, deltas, tau)
        assert torch.allclose(x, ref, rtol=1e-9, atol=1e-9), (tau, (x - ref).abs().max())
    # the chain is linear in the noise: the noise's contribution at tau = 0.5 is half that at 1
    # (tau, not tau^2), and tau = 0 is the deterministic chain from x_T
    spread_half, spread_one = out[0.5] - out[0.0], out[1.0] - out[0.0]
    assert float(spread_one.std()) > 0.1
    assert torch.allclose(spread_half, 0.5 * spread_one, rtol=1e-6, atol=1e-8)
    assert float(spread_half.std() / spread_one.std()) == pytest.approx(0.5, rel=1e-6)


# ------------------------------------------------------------------ NFE: both networks counted


def _calls(method, sampler, nfe):
    counts = {}
    handles = [m.register_forward_pre_hook(lambda mod, a, k=k: counts.__setitem__(k, counts.get(k, 0) + 1))
               for k, m in method.modules().items()]
    try:
        total = counted_nfe(method, sampler, nfe, gen(0))
    finally:
        for h in handles:
            h.remove()
    return total, counts


def test_call_audit_counts_transformer_and_head():
    method = MAR(DIGITS, model_size="tiny")
    total, counts = _calls(method, "ddpm-s20", 10)
    assert counts == {"ema_net": 10, "ema_head": 10 * 20} and total == 10 * 21
    check_nfe(method, "ddpm-s20", 10, total)  # declared 1 + S calls per step
    total, counts = _calls(method, "ddpm", 2)
    assert counts == {"ema_net": 2, "ema_head": 200} and total == 2 * 101
    # K > L = 16: steps that generate nothing make no call
    total, _ = _calls(method, "ddpm-s20", 50)
    assert total == 16 * 21
    # a sampler that declared only the transformer's calls fails the host's audit
    method.samplers = (dataclasses.replace(method.sampler("ddpm-s20"), calls_per_step=1),)
    with pytest.raises(NFEMismatch):
        check_nfe(method, "ddpm-s20", 10, _calls(method, "ddpm-s20", 10)[0])
    ce = MAR(DIGITS, model_size="tiny", loss="ce", ema_decay=None)
    assert [s.name for s in ce.samplers] == ["categorical"]
    total, counts = _calls(ce, "categorical", 10)
    assert counts == {"net": 10, "head": 10} and total == 20
    check_nfe(ce, "categorical", 10, total)


def test_dc_ae_tokens_count_the_decoder_and_carry_a_unit_scale():
    method = MAR(DIGITS, model_size="tiny", tokens="dc-ae", patch_size=1, ema_decay=None)
    assert method.token_shape == (1, 4, 4) and (method.L, method.d) == (16, 1)  # f2: 4x4 latent
    assert [s.name for s in method.stages()] == ["autoencoder", "mar"]
    assert "ae" in method.training_step("autoencoder", torch.rand(8, 1, 8, 8) * 2 - 1, 0)
    z = method.on_stage_start("mar", torch.rand(64, 1, 8, 8, generator=gen(0)) * 2 - 1, gen(1))
    assert z.shape == (64, 1, 4, 4) and abs(float(z.std()) - 1) < 1e-4  # latents scaled by 1 / sigma_hat
    total, counts = _calls(method, "ddpm-s20", 10)
    assert counts == {"net": 10, "head": 200, "ae_decoder": 1} and total == 211
    check_nfe(method, "ddpm-s20", 10, total)  # declared 2 + S per step: the decoder's call fits
    with pytest.raises(MethodError, match="latent"):
        MAR(DIGITS, tokens="dc-ae", patch_size=8)


def test_declared_calls_match_sampler_params():
    for s in MAR.samplers:
        assert s.calls_per_step == 1 + s.params["diffusion_steps"]


# ------------------------------------------------------------------ options and errors


def test_unsupported_data_and_bad_options_fail_clearly():
    with pytest.raises(MethodError, match="image"):
        MAR(DataSpec(name="8gaussians", modality="toy2d", shape=(2,)))
    with pytest.raises(MethodError, match="image"):
        MAR(DataSpec(name="synthlang", modality="text", shape=(64,), vocab_size=27))
    with pytest.raises(MethodError, match="patch_size"):
        MAR(DIGITS, patch_size=3)
    for bad in ({"order": "zigzag"}, {"loss": "mse"}, {"mask_schedule": "linear"}):
        with pytest.raises(ValueError):
            MAR(DIGITS, **bad)


def test_ce_variant_quantises_to_a_fitted_codebook():
    ds = Digits()
    x = ds.split("train").x[:300]
    method = MAR(ds.spec(), model_size="tiny", loss="ce", codebook_size=32)
    method.on_stage_start("mar", x, gen(0))
    book = method.head.codebook
    assert book.shape == (32, 4) and torch.equal(book, method.ema_head.codebook)
    tokens = patchify(x, 2).reshape(-1, 4)
    err = (tokens - book[method.head.quantise(tokens)]).pow(2).sum(1).mean()
    assert err < 0.5 * (tokens - tokens.mean(0)).pow(2).sum(1).mean()  # k-means beats one centre
    loss = method.training_step("mar", x[:8], 0)["adam"].detach()
    assert abs(float(loss) - math.log(32)) < 1.0  # near-uniform logits at initialisation


def test_claims_name_the_ablation_variants():
    claims = []
    mar_module.gmbench_register_claims(claims.append)
    labels = {(c.a.method, c.b.method) for c in claims}
    assert labels == {("mar", "mar[loss=ce]"), ("mar", "mar[order=raster]")}
    assert {c.metric for c in claims} == {"fid"} and all(c.dataset == "digits" for c in claims)


def test_any_image_dataset_through_the_imagefolder_path(tmp_path):
    """RGB images of another size via the datasets path: 16x16x3, 4x4 patches -> 16 tokens of 48."""
    from PIL import Image

    from gmbench.data.hub import ImageFolderDataset

    folder = tmp_path / "images"
    folder.mkdir()
    g = gen(0)
    for i in range(20):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    ds = ImageFolderDataset(str(folder), size=16, cache_dir=str(tmp_path / "cache"))
    spec = ds.spec()
    assert spec.shape == (3, 16, 16)
    method = MAR(spec, model_size="tiny", patch_size=4)
    assert (method.L, method.d) == (16, 48)
    budget = dataclasses.replace(SMOKE, train_flops={"image": 2e9}, batch_size={"image": 8})
    (report,) = train(method, ds.split("train").x, budget, "image", gen(1))
    assert report.steps >= 1 and report.flops > 0
    x = method.sample(3, "ddpm-s20", 2, gen(2))
    # the output is clamped to the data range, so the range says nothing; the colour channels
    # must differ (a 3-channel dataset read as grey would repeat one) and the samples too
    assert x.shape == (3, 3, 16, 16) and torch.isfinite(x).all()
    assert not torch.equal(x[:, 0], x[:, 1]) and not torch.equal(x[0], x[1])


# ------------------------------------------------------------------ learning


def test_learns_digits_at_the_smoke_budget(tmp_path):
    from tests.image_baselines import image_scores, pixel_gaussian

    # smoke's FLOPs at half its batch: 532 steps (at ~90 the samples are still behind a
    # per-pixel Gaussian on sliced W2: 0.23 against 0.154)
    ds = Digits()
    budget = dataclasses.replace(SMOKE, batch_size={"image": 32})
    train_x = ds.split("train").x
    torch.manual_seed(0)
    method = MAR(ds.spec(), model_size=budget.model_size)
    (report,) = train(method, train_x, budget, "image", gen(0))
    assert report.steps >= 400
    got = image_scores(method.sample(256, "ddpm-s20", 10, gen(1)), ds, tmp_path)
    base = image_scores(pixel_gaussian(train_x, 256, gen(2)), ds, tmp_path)
    # measured: FID 128 against the per-pixel Gaussian's 209, sliced W2 0.124 against 0.154
    # (untrained: FID 381, sliced W2 0.74); a full-covariance Gaussian (FID 81) is still ahead
    assert got["fid"] < 0.75 * base["fid"] and got["swd"] < base["swd"], (got, base)


# ------------------------------------------------------------------ the conformance kit


class TestMARConformance(MethodConformance):
    method = MAR
    dataset = "digits"


class _MARCrossEntropy(MAR):
    """MAR with ``loss="ce"``: its sampler at class level, where the conformance kit reads it
    (an instance of MAR with ``loss="ce"`` offers only ``categorical``)."""

    samplers = CE_SAMPLERS


class _MARLatent(MAR):
    """MAR with ``tokens="dc-ae"``: its samplers (one more declared call per step for the
    decoder) at class level, where the conformance kit reads them."""

    samplers = LATENT_DIFFUSION_SAMPLERS


class TestMARConformanceLatent(MethodConformance):
    method = _MARLatent
    dataset = "digits"
    hparams = {"tokens": "dc-ae", "patch_size": 1}
    train_steps = 2


class TestMARConformanceCE(MethodConformance):
    method = _MARCrossEntropy
    dataset = "digits"
    hparams = {"loss": "ce", "order": "raster", "codebook_size": 16}
