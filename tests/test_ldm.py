"""Tests for the `ldm` plugin (Rombach et al., arXiv 2112.10752).

Closed forms checked, each computed here independently of the plugin's code:

* the KL of a diagonal Gaussian posterior to N(0, I), ``1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)``,
  against torch.distributions and a hand value, and the stage-1 loss built from it;
* the latent scale ``1 / sigma_hat`` (appendix G) on an encoder whose latents are a known
  affine map of the pixels: ``sigma_hat = |a| std(avgpool(x))``;
* LDM's sqrt-linear beta schedule, and one DDIM step (Eq. 12 of arXiv 2010.02502) with a stub
  noise network, written out from ``abar``;
* FLOPs: a latent-stage step costs the encoder's forward pass plus the U-Net's step, and the
  scale estimate's encoding pass is charged by the host to the latent stage;
* the NFE audit: a sample makes exactly ``nfe`` network calls, the decoder's included;
* the scale's direction: the latent network trains on ``scale * E(x)`` and a sample decodes
  ``z_0 / scale`` (spies on the latent DDPM's training call and on the decoder).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmbench.budget import SMOKE
from gmbench.data.base import DataSpec
from gmbench.data.digits import Digits
from gmbench.evaluate import check_nfe, counted_nfe
from gmbench.flops import count_cost
from gmbench.method import MethodError
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.diffusion.kl_autoencoder import DiagonalGaussian
from gmbench_methods.diffusion.ldm import LDM

_DIGITS: list = []


def digits() -> Digits:
    """The digits dataset, loaded once for the file."""
    if not _DIGITS:
        _DIGITS.append(Digits())
    return _DIGITS[0]


DIGITS = DataSpec(name="digits", modality="image", shape=(1, 8, 8), levels=17, value_range=(-1.0, 1.0), num_classes=10)
T = 1000
# LDM's "linear" schedule of the released code, computed without the plugin
BETAS = np.linspace(math.sqrt(0.0015), math.sqrt(0.0195), T) ** 2
ABAR = np.concatenate([[1.0], np.cumprod(1 - BETAS)])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny(**kw) -> LDM:
    torch.manual_seed(0)
    return LDM(DIGITS, model_size="tiny", **kw)


# ------------------------------------------------------------------ the autoencoder


@pytest.mark.parametrize("autoencoder", ["kl", "dc-ae"])
def test_round_trip_shapes(autoencoder):
    m = tiny(autoencoder=autoencoder)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    z = m.encode(x)
    assert m.latent_shape == (1, 4, 4) and z.shape == (5, 1, 4, 4)
    assert m.decode(z).shape == (5, 1, 8, 8)
    if autoencoder == "kl":
        assert m.encoder(x).shape == (5, 2, 4, 4)  # mean and log-variance
    assert LDM(DIGITS, model_size="tiny", f=4).latent_shape == (4, 2, 2)  # "auto": C f^2 / 4 channels


def test_kl_term_is_the_diagonal_gaussian_closed_form():
    torch.manual_seed(1)
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    q = DiagonalGaussian(torch.cat([mean, logvar], 1))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(q.kl(), ref, rtol=1e-5, atol=1e-5)
    # by hand: mu = 1, sigma = 1 gives 1/2 per element; the standard normal gives 0
    one = DiagonalGaussian(torch.cat([torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)], 1))
    assert float(one.kl()) == pytest.approx(0.5 * 4)
    assert float(DiagonalGaussian(torch.zeros(1, 2, 2, 2)).kl()) == 0.0
    # samples have the posterior's moments
    n = 2000
    z = torch.stack([q.sample(gen(s)) for s in range(n)])
    # per element: the mean within 5 standard errors, the standard deviation within 10%
    # (its standard error is sigma / sqrt(2n) = 1.6% of sigma)
    assert ((z.mean(0) - mean).abs() < 5 * q.std / n ** 0.5).all()
    assert ((z.std(0) / q.std - 1).abs() < 0.1).all()


def test_autoencoder_loss_is_reconstruction_plus_weighted_kl():
    m = tiny(kl_weight=0.5)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(3)
    loss = m.autoencoder_loss(x)
    torch.manual_seed(3)
    q = DiagonalGaussian(m.encoder(x))
    z = q.mean + q.std * torch.randn_like(q.mean)
    rec = (m.decoder(z) - x).abs().flatten(1).sum(1)
    assert float(loss.detach()) == pytest.approx(float((rec + 0.5 * q.kl()).mean().detach() / 64), rel=1e-5)


class AffineEncoder(nn.Module):
    """Latent mean ``a * avgpool2(x) + b`` with a negligible posterior variance."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        mean = self.a * F.avg_pool2d(x, 2) + self.b
        return torch.cat([mean, torch.full_like(mean, -30.0)], 1)


def test_latent_scale_is_the_inverse_std_of_the_encoded_data():
    m = tiny(scale_examples=300)
    m.encoder = AffineEncoder(a=-2.5, b=7.0)
    x = digits().split("train").x
    assert m.on_stage_start("autoencoder", x, gen(0)) is None and m.scale == 1.0
    assert m.on_stage_start("latent", x, gen(0)) is None  # the pixels stay the data
    pooled = F.avg_pool2d(x[:300].double(), 2)
    sigma_hat = 2.5 * float(pooled.std(unbiased=False))  # std over all b*c*h*w elements
    assert m.scale == pytest.approx(1 / sigma_hat, rel=1e-4)
    assert m.scale_report["examples"] == 300
    # the training step feeds the U-Net scale * E(x): unit standard deviation on the data
    z = m.encode(x[:300]) * m.scale
    assert float(z.std(unbiased=False)) == pytest.approx(1.0, rel=1e-3)


# ------------------------------------------------------------------ FLOPs


def test_latent_step_counts_the_encoder_with_the_unet():
    m = tiny()
    m.estimate_scale(torch.rand(64, 1, 8, 8) * 2 - 1)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    _, step = count_cost(m.training_step, "latent", x, 0)
    _, enc = count_cost(m.encoder, x)
    z = torch.randn(8, 1, 4, 4)
    _, unet = count_cost(m.diffusion.training_step, "denoise", z, 0)
    assert enc.total > 0.2 * unet.total  # the encoder is a large share: leaving it out would show
    assert step.total >= enc.total + unet.total
    assert step.total <= 1.01 * (enc.total + unet.total)  # plus posterior sampling and scaling


@pytest.mark.parametrize("autoencoder", ["kl", "dc-ae"])
def test_host_charges_the_scale_estimate_and_the_encoder_to_the_latent_stage(autoencoder):
    m = tiny(scale_examples=256, autoencoder=autoencoder)
    budget = dataclasses.replace(SMOKE, train_flops={"image": 2.5e10})
    x = digits().split("train").x
    reports = train(m, x, budget, "image", gen(0))
    assert [r.name for r in reports] == ["autoencoder", "latent"]
    ae, latent = reports
    assert ae.flops_allowed == pytest.approx(0.5 * 2.5e10) and ae.flops <= ae.flops_allowed
    _, enc = count_cost(m.encode, x[:256], gen(0))
    assert latent.prepare_flops == pytest.approx(enc.total, rel=0.01)  # the encoding pass, metered
    assert latent.flops <= latent.flops_allowed and latent.steps >= 3
    # a metered step is the encoder plus the U-Net, forward and backward
    batch = x[:budget.batch_size["image"]]
    _, enc_b = count_cost(m.encoder, batch)
    per_step = (latent.flops - latent.prepare_flops) / latent.steps
    assert per_step > enc_b.total
    with torch.no_grad():
        z = m.encode(batch) * m.scale

    def unet_only():  # the U-Net's step alone, forward and backward, on the same latents
        m.diffusion.training_step("denoise", z, 0)["adam"].backward()

    _, unet_b = count_cost(unet_only)
    # the meter also counts Adam's update and gradient clipping: a few percent more
    assert enc_b.total + unet_b.total < per_step < 1.1 * (enc_b.total + unet_b.total), (per_step, enc_b.total, unet_b.total)


# ------------------------------------------------------------------ the latent diffusion and samplers


def test_schedule_is_ldms_sqrt_linear_schedule():
    m = tiny()
    assert torch.allclose(m.diffusion.schedule.abar, torch.tensor(ABAR), rtol=1e-12)


class StubEps(nn.Module):
    """``eps(z, t) = 0.3 z + 0.1 + t`` (t as the backbone sees it, t / T); counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, z, t):
        self.calls += 1
        return 0.3 * z + 0.1 + torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1, 1, 1)


def test_ddim_step_is_eq_12_with_a_stub_network():
    m = tiny(ema_decay=0)
    m.diffusion.net = StubEps()
    z_T = torch.randn((3, 1, 4, 4), generator=gen(5)).double()
    out = m.sample_latents(3, "ddim", 2, gen(5)).double()  # taus = [1, T]: T -> 1 -> 0

    def step(z, t, s):
        eps = 0.3 * z + 0.1 + t / T
        x0 = (z - math.sqrt(1 - ABAR[t]) * eps) / math.sqrt(ABAR[t])
        return math.sqrt(ABAR[s]) * x0 + math.sqrt(1 - ABAR[s]) * eps

    ref = step(step(z_T, T, 1), 1, 0)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert m.diffusion.net.calls == 2


def test_sample_decodes_the_latents_divided_by_the_scale():
    m = tiny()
    m.latent_scale.scale.fill_(0.25)
    z = m.sample_latents(4, "ddim", 3, gen(2))
    x = m.sample(4, "ddim", 4, gen(2))
    assert torch.allclose(x, m.decode(z / 0.25).clamp(-1, 1), atol=1e-6)


class CaptureDecoder(nn.Module):
    """A stub decoder: records its input latents, returns ``0.5 * upsample2(z)`` (an image)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, z):
        self.seen.append(z.clone())
        return 0.5 * F.interpolate(z, scale_factor=2)


def test_latent_network_trains_on_scale_times_e_and_samples_decode_z_over_scale():
    """The latent DDPM is fed ``scale * E(x)`` (dividing would train it on latents 16x off at
    scale 0.25), and a sample decodes ``z_0 / scale``."""
    m = tiny(ema_decay=0)
    m.encoder = AffineEncoder(a=-2.5, b=0.7)  # posterior std exp(-15): z = E(x) to ~3e-7
    m.latent_scale.scale.fill_(0.25)
    fed = []
    real_step = m.diffusion.training_step

    def spy(stage, z, step):
        fed.append(z.clone())
        return real_step(stage, z, step)

    m.diffusion.training_step = spy
    x = torch.rand(6, 1, 8, 8, generator=gen(3)) * 2 - 1
    loss = m.training_step("latent", x, 0)["unet"]
    (z,) = fed
    e_x = -2.5 * F.avg_pool2d(x, 2) + 0.7  # E(x), computed here
    torch.testing.assert_close(z, 0.25 * e_x, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(loss)
    # sampling: the decoder sees z_0 / scale, and its output (clamped) is the sample
    m.decoder = CaptureDecoder()
    z0 = m.sample_latents(5, "ddim", 3, gen(4))
    out = m.sample(5, "ddim", 4, gen(4))  # NFE 4: 3 U-Net steps and the decoder
    (seen,) = m.decoder.seen
    torch.testing.assert_close(seen, z0 / 0.25)
    torch.testing.assert_close(out, (0.5 * F.interpolate(z0 / 0.25, scale_factor=2)).clamp(-1, 1))


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("nfe", [2, 10])
def test_nfe_counts_every_network_call_including_the_decoder(sampler, nfe):
    m = tiny()
    counted = counted_nfe(m, sampler, nfe, gen(0))
    assert counted == nfe  # nfe - 1 U-Net calls and one decoder call
    check_nfe(m, sampler, nfe, counted)
    with pytest.raises(MethodError, match="nfe must be an integer in 2"):
        m.sample(1, sampler, 1, gen(0))


def test_ancestral_adds_noise_and_ddim_does_not():
    m = tiny()
    g1, g2 = gen(0), gen(0)
    a = m.sample_latents(2, "ancestral", 5, g1)
    b = m.sample_latents(2, "ddim", 5, g2)
    # the zero-initialised U-Net predicts eps = 0: DDIM shrinks z_T deterministically, ancestral
    # draws fresh noise at every step but the last
    z_T = torch.randn((2, 1, 4, 4), generator=gen(0))
    assert torch.allclose(b, z_T / math.sqrt(ABAR[T]), rtol=1e-4)
    assert not torch.allclose(a, b)


def test_toy2d_and_bad_settings_fail_with_one_line_messages():
    toy = DataSpec(name="8gaussians", modality="toy2d", shape=(2,))
    with pytest.raises(MethodError, match="latent diffusion needs images"):
        LDM(toy)
    for kw, what in (({"autoencoder": "vq"}, "autoencoder"), ({"f": 3}, "power of two"), ({"f": 16}, "does not divide"),
                     ({"ae_share": 1.0}, "ae_share"), ({"rec_loss": "lpips"}, "rec_loss"), ({"ae_channels": 6}, "ae_channels")):
        with pytest.raises(MethodError, match=what):
            LDM(DIGITS, model_size="tiny", **kw)
    with pytest.raises(NotImplementedError):
        tiny().log_likelihood(torch.zeros(2, 1, 8, 8), gen(0))


def test_registered_through_the_entry_point_with_its_claims():
    from gmbench.plugins import Registries

    reg = Registries()
    assert reg.methods.get("ldm") is LDM
    info = LDM.describe()
    assert info["paper"] == "2112.10752" and info["likelihood"] == "none"
    claims = [reg.claims.get(n) for n in reg.claims]
    claims = [c for c in claims if c.paper == "2112.10752"]
    assert {c.name for c in claims} == {"ldm-beats-pixel-ddpm-digits-fid-10", "ldm-beats-pixel-ddpm-digits-fid-50"}
    ddpm = reg.methods.get("ddpm")
    for c in claims:
        assert c.relation == "better" and c.metric == "fid" and c.dataset == "digits"
        assert c.a.method == "ldm" and c.a.sampler in {s.name for s in LDM.samplers}
        assert c.b.method == "ddpm" and c.b.sampler in {s.name for s in ddpm.samplers}
        assert c.a.nfe == c.b.nfe and "budget-matched" in c.statement


# ------------------------------------------------------------------ learning


def test_learns_digits_at_the_smoke_budget(tmp_path):
    from tests.image_baselines import image_scores, pixel_gaussian

    ds = digits()
    train_x, test_x = ds.split("train").x, ds.split("test").x
    torch.manual_seed(0)
    method = LDM(ds.spec(), model_size=SMOKE.model_size)
    reports = train(method, train_x, SMOKE, "image", gen(0))
    assert sum(r.flops for r in reports) <= SMOKE.flops_for("image")
    samples = method.sample(256, "ddim", 10, gen(1))
    assert samples.shape == (256, 1, 8, 8) and samples.abs().max() <= 1
    got = image_scores(samples, ds, tmp_path)
    base = image_scores(pixel_gaussian(train_x, 256, gen(2)), ds, tmp_path)
    # measured: FID 47 against the per-pixel Gaussian's 209 (sliced W2 0.13 against 0.154)
    assert got["fid"] < 0.5 * base["fid"] and got["swd"] < base["swd"], (got, base)
    # the autoencoder learned too: held-out reconstructions far closer than the mean image
    with torch.no_grad():
        rec = method.decode(method.posterior(test_x).mean).clamp(-1, 1)
    mean_err = float((train_x.mean(0) - test_x).abs().mean())
    assert float((rec - test_x).abs().mean()) < 0.7 * mean_err


# ------------------------------------------------------------------ the conformance kit


class TestLDMConformance(MethodConformance):
    method = LDM
    dataset = "digits"

    # (autoencoder="dc-ae" is trained by the host in the FLOP test above; a second conformance
    # class would double the file's time)
