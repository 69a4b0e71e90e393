"""Tests for the `dc-ae` plugin (Chen et al., arXiv 2410.10733, Deep Compression Autoencoder).

Checked independently of the plugin's code:

* the shortcuts (Sec. 3.2): space-to-channel shapes and values (pixel-unshuffle then
  averaging groups of consecutive channels: 2x2 average pooling when the channel count is kept,
  row-pair averages when it doubles), channel-to-space (duplication then pixel-shuffle: nearest
  upsampling when the channel count is kept); both keep a constant image constant;
* the whole shortcut path: with every learned convolution of the encoder silenced, an image
  maps to latents whose channel mean is the image's f x f block mean; the decoder's shortcut
  path maps a constant latent to a constant feature map; ``residual=False`` has no such path
  and the same parameters;
* encoder/decoder shapes for f = 1, 2, 4, 8 on 8x8 digits, the ``auto`` latent channels;
* the latent Gaussian: running moments, and decoded samples with the fitted mean/covariance;
* the reconstruction metric: PSNR's closed form, perfect reconstructions score 100 dB and an
  rFID of ~0; through the host's evaluator;
* conformance on digits; it learns at the smoke budget (PSNR well above the mean image's).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmbench.budget import SMOKE
from gmbench.data.digits import Digits
from gmbench.evaluate import counted_nfe, evaluate
from gmbench.method import MethodError
from gmbench.metrics.base import EvalContext
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.autoencoders import dc_ae as dc_ae_module
from gmbench_methods.autoencoders.dc_ae import (DCAE, LatentGaussian, ReconstructionQuality, channel_to_space,
                                                psnr_db, space_to_channel)

DIGITS = Digits()
SPEC = DIGITS.spec()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the shortcuts


def test_space_to_channel_shapes_and_values():
    x = torch.randn(2, 3, 8, 8, generator=gen())
    assert space_to_channel(x, 6).shape == (2, 6, 4, 4)
    assert space_to_channel(x, 12).shape == (2, 12, 4, 4)  # no averaging: plain pixel-unshuffle
    assert space_to_channel(x, 1, factor=1).shape == (2, 1, 8, 8)
    # channel count kept: each group is the 2x2 block of one channel -> average pooling
    torch.testing.assert_close(space_to_channel(x, 3), F.avg_pool2d(x, 2))
    # channel count doubled: groups are the two pixels of each row of a 2x2 block
    y = space_to_channel(x, 6)
    top = (x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2]) / 2
    bottom = (x[:, :, 1::2, 0::2] + x[:, :, 1::2, 1::2]) / 2
    torch.testing.assert_close(y[:, 0::2], top)
    torch.testing.assert_close(y[:, 1::2], bottom)
    # factor 1: averages consecutive channels
    torch.testing.assert_close(space_to_channel(x, 1, factor=1), x.mean(1, keepdim=True))
    with pytest.raises(MethodError, match="cannot be averaged"):
        space_to_channel(x, 5)


def test_channel_to_space_shapes_and_values():
    z = torch.randn(2, 4, 2, 2, generator=gen(1))
    assert channel_to_space(z, 4).shape == (2, 4, 4, 4)
    assert channel_to_space(z, 2).shape == (2, 2, 4, 4)
    assert channel_to_space(z, 8, factor=1).shape == (2, 8, 2, 2)
    # channel count kept: every channel repeated 4 times then shuffled -> nearest upsampling
    torch.testing.assert_close(channel_to_space(z, 4), F.interpolate(z, scale_factor=2, mode="nearest"))
    # halved: channel c fills rows 2i (from its first copy pair) -- output channel o takes input o*2 + (0/1)
    u = channel_to_space(z, 2)
    torch.testing.assert_close(u[:, :, 0::2, :], F.interpolate(z[:, 0::2], scale_factor=(1, 2), mode="nearest"))
    torch.testing.assert_close(u[:, :, 1::2, :], F.interpolate(z[:, 1::2], scale_factor=(1, 2), mode="nearest"))
    torch.testing.assert_close(channel_to_space(z, 8, factor=1), z.repeat_interleave(2, dim=1))
    with pytest.raises(MethodError, match="cannot be duplicated"):
        channel_to_space(z, 3, factor=1)


@pytest.mark.parametrize("cin,cout", [(1, 4), (4, 4), (4, 8), (8, 16), (16, 8)])
def test_shortcuts_keep_a_constant_image_constant(cin, cout):
    x = torch.full((3, cin, 8, 8), -0.375)
    down = space_to_channel(x, cout)
    assert down.shape == (3, cout, 4, 4) and torch.equal(down, torch.full_like(down, -0.375))
    if (cout * 4) % cin == 0:
        up = channel_to_space(x, cout)
        assert up.shape == (3, cout, 16, 16) and torch.equal(up, torch.full_like(up, -0.375))


def silence_learned_paths(model: DCAE) -> None:
    """Zero every learned convolution except the encoder's first, which copies the pixel to
    every channel: what is left is the shortcut path (ResBlocks with zero convolutions are the
    identity, RMSNorm(0) = 0)."""
    with torch.no_grad():
        for m in model.modules().values():
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.zero_()
                    if conv.bias is not None:
                        conv.bias.zero_()
        model.encoder.project_in.weight[:, :, 1, 1] = 1.0  # centre tap: every channel = the pixel


@pytest.mark.parametrize("f", [2, 4, 8])
def test_encoder_shortcut_path_gives_block_means(f):
    model = DCAE(SPEC, model_size="tiny", f=f)
    silence_learned_paths(model)
    x = DIGITS.split("test").x[:5]
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (5, *model.latent_shape)
        # each averaging step averages equal groups, so the channel mean is the block mean
        torch.testing.assert_close(z.mean(1, keepdim=True), F.avg_pool2d(x, f), rtol=1e-5, atol=1e-6)
        # a constant image gives a constant latent; the decoder's shortcut path keeps it constant
        const = torch.full((2, *SPEC.shape), 0.25)
        zc = model.encode(const)
        torch.testing.assert_close(zc, torch.full_like(zc, 0.25))
        # through the decoder's own forward: what reaches its output norm is the shortcut's
        seen = []
        model.decoder.out_norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        model.decode(zc)
        (h,) = seen
        assert h.shape[0] == 2 and h.shape[-2:] == SPEC.shape[1:]
        torch.testing.assert_close(h, torch.full_like(h, 0.25))
    # the ablation has no such path: silenced, it maps everything to zero, at both ends
    plain = DCAE(SPEC, model_size="tiny", f=f, residual=False)
    silence_learned_paths(plain)
    seen = []
    plain.decoder.out_norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        assert torch.count_nonzero(plain.encode(x)) == 0
        plain.decode(torch.full((2, *plain.latent_shape), 0.25))
        assert torch.count_nonzero(seen[0]) == 0
    assert plain.num_parameters() == model.num_parameters()


@pytest.mark.parametrize("f,channels", [(1, 1), (2, 1), (4, 4), (8, 16)])
def test_round_trip_shapes_and_auto_latent_channels(f, channels):
    model = DCAE(SPEC, model_size="tiny", f=f)
    assert model.latent_channels == channels and model.latent_shape == (channels, 8 // f, 8 // f)
    x = DIGITS.split("test").x[:3]
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (3, channels, 8 // f, 8 // f)
        assert model.decode(z).shape == (3, 1, 8, 8)
        r = model.reconstruct(x)
        assert r.shape == (3, 1, 8, 8) and r.min() >= -1 and r.max() <= 1
    assert model.widths == [32 * min(2**i, 4) for i in range(int(math.log2(f)) + 1)]
    assert DCAE(SPEC, model_size="tiny", f=8, latent_channels=32).latent_shape == (32, 1, 1)
    rgb = DCAE(type(SPEC)(name="rgb", modality="image", shape=(3, 32, 32), levels=256, value_range=(-1.0, 1.0)),
               model_size="tiny", f=8)
    assert rgb.latent_shape == (64, 4, 4)  # 3 * 64 / 4 = 48 -> 64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"f": 3}, "f must be a power of two"),
        ({"f": 16}, "does not divide the image size"),
        ({"f": 8, "latent_channels": 48}, "must divide the deepest width 128"),
        ({"latent_channels": 0}, "latent_channels must be"),
        ({"loss": "lpips"}, "loss must be one of"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(MethodError, match=match) as err:
        DCAE(SPEC, model_size="tiny", **kwargs)
    assert "\n" not in str(err.value)


def test_bad_shapes_raise():
    model = DCAE(SPEC, model_size="tiny")
    with pytest.raises(MethodError, match="expected images of shape"):
        model.encode(torch.zeros(2, 1, 4, 4))
    with pytest.raises(MethodError, match="expected latents of shape"):
        model.decode(torch.zeros(2, 1, 2, 2))


# ------------------------------------------------------------------ the latent Gaussian sampler


def test_latent_moments_and_decoded_gaussian_samples():
    g = gen(2)
    prior = LatentGaussian(3)
    a, b = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g) + 2
    prior.update(a, decay=0.0)
    torch.testing.assert_close(prior.mean, a.mean(0))
    torch.testing.assert_close(prior.second, a.T @ a / 50)
    prior.update(b, decay=0.75)
    torch.testing.assert_close(prior.mean, 0.75 * a.mean(0) + 0.25 * b.mean(0))
    torch.testing.assert_close(prior.second, 0.75 * a.T @ a / 50 + 0.25 * b.T @ b / 50)

    # decoded samples: with a linear decoder x = A vec(z), the samples' moments are A mu, A Sigma A^T
    model = DCAE(SPEC, model_size="tiny", f=8)  # latent (16, 1, 1)
    mu = torch.linspace(-0.5, 0.5, 16)
    root = torch.randn(16, 16, generator=g) * 0.2
    sigma = root @ root.T + 0.05 * torch.eye(16)
    model.prior.mean.copy_(mu)
    model.prior.second.copy_(sigma + torch.outer(mu, mu))
    lin = torch.randn(64, 16, generator=g) * 0.03  # samples stay well inside [-1, 1] (no clamping)

    class Linear(nn.Module):
        def forward(self, z):
            return (z.flatten(1) @ lin.T).reshape(-1, 1, 8, 8)

    model.decoder = Linear()
    x = model.sample(40000, "latent-gaussian", 1, gen(3)).flatten(1).double()
    mean, cov = lin.double() @ mu.double(), lin.double() @ sigma.double() @ lin.double().T
    assert x.abs().max() < 1
    assert ((x.mean(0) - mean).abs() < 5 * (cov.diagonal() / len(x)).sqrt()).all()  # 5 standard errors
    assert (torch.cov(x.T) - cov).abs().max() < 0.05 * cov.abs().max()
    assert torch.equal(model.sample(5, "latent-gaussian", 1, gen(4)), model.sample(5, "latent-gaussian", 1, gen(4)))


def test_samples_from_a_rank_deficient_slightly_indefinite_latent_covariance():
    # the plain AE at f=8 on digits: latents with almost no spread in some directions;
    # float32 running moments then give a covariance with eigenvalues a little below 0,
    # where a Cholesky factor failed and took the run's reconstruction metrics with it
    g = gen(5)
    model = DCAE(SPEC, model_size="tiny", f=8)  # latent (16, 1, 1)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    evals = torch.cat([torch.full((4,), 0.01), torch.zeros(12)]).double()
    evals[-3:] = -1e-7  # indefinite by rounding, as float32 running moments come out
    mu = torch.full((16,), 0.2)  # samples stay inside the data range [-1, 1] (no clamping)
    model.prior.mean.copy_(mu)
    model.prior.second.copy_((basis * evals) @ basis.T + torch.outer(mu, mu).double())
    with pytest.raises(torch.linalg.LinAlgError):  # what the old Cholesky sampler hit
        torch.linalg.cholesky(model.prior.covariance() + 1e-6 * float(model.prior.covariance().diagonal().mean())
                              * torch.eye(16, dtype=torch.float64))
    model.decoder = nn.Flatten()  # identity on the (16, 1, 1) latent: the samples are the latents
    z = model.sample(20000, "latent-gaussian", 1, gen(6)).flatten(1).double()
    assert torch.isfinite(z).all()
    assert ((z.mean(0) - mu).abs() < 0.01).all()
    spread = z - mu  # the samples stay in the 4-dimensional span, with its variances
    proj = spread @ basis
    assert proj[:, 4:].abs().max() < 1e-3 and ((proj[:, :4].var(0) - 0.01).abs() < 0.001).all()


class FixedEncoder(nn.Module):
    """A cheap stand-in encoder with known latents: 4x4 block means, scaled per channel."""

    def forward(self, x):
        return F.avg_pool2d(x, 4).repeat(1, 4, 1, 1) * torch.tensor([1.0, -2.0, 0.5, 3.0])[None, :, None, None]


class ZeroDecoder(nn.Module):
    def forward(self, z):
        return z.new_zeros(z.shape[0], *SPEC.shape)


def test_training_steps_fit_the_prior_to_the_encoded_data():
    torch.manual_seed(0)
    model = DCAE(SPEC, model_size="tiny", f=4)  # latent (4, 2, 2)
    model.encoder = FixedEncoder()  # fixed latents; the decoder is irrelevant to the fit
    model.decoder = ZeroDecoder()
    train_x = DIGITS.split("train").x
    with torch.no_grad():
        z = model.encode(train_x).flatten(1).double()
    g = gen(5)
    for step in range(1500):  # past the warm-up of the decay, min(0.99, (1 + k) / (10 + k))
        model.training_step("autoencoder", train_x[torch.randint(0, len(train_x), (64,), generator=g)], step)
    # the running fit averages ~100 batches of 64: within a few standard errors of the data's moments
    se = z.std(0) / math.sqrt(100 * 64)
    assert ((model.prior.mean.double() - z.mean(0)).abs() < 5 * se).all()
    cov = model.prior.covariance()
    rel = (cov - torch.cov(z.T, correction=0)).abs().max() / torch.cov(z.T).abs().max()
    assert rel < 0.1
    torch.testing.assert_close(model.latent_std().double().flatten(), cov.diagonal().sqrt(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the reconstruction metric


class Reconstructor(nn.Module):
    """A stand-in method: ``reconstruct`` is ``fn``."""

    name = "stand-in"
    likelihood = "none"

    def __init__(self, fn):
        super().__init__()
        self.reconstruct = fn


def test_psnr_closed_form():
    x = torch.zeros(2, 1, 2, 2)
    r = x.clone()
    r[0] += 0.2  # MSE on [0,1] scale: (0.2/2)^2 = 0.01 -> 20 dB
    r[1, 0, 0, 0] = 1.0  # one pixel off by 1 of 2: MSE (0.5^2)/4 = 1/16 -> 12.04 dB
    assert psnr_db(r, x, (-1.0, 1.0)) == pytest.approx((20.0 + 10 * math.log10(16)) / 2, rel=1e-6)
    assert psnr_db(x, x, (-1.0, 1.0)) == pytest.approx(100.0)


def test_reconstruction_metric_scores_perfect_and_mean_reconstructions(tmp_path):
    ctx = EvalContext(dataset=DIGITS, n_samples=64, seed=0, cache_dir=str(tmp_path))
    metric = ReconstructionQuality()
    test_x = DIGITS.split("test").x
    perfect = metric.score_model(Reconstructor(lambda x: x.clone()), ctx)
    assert perfect["psnr"] == pytest.approx(100.0) and abs(perfect["rfid"]) < 1e-3
    mean_img = DIGITS.split("train").x.mean(0, keepdim=True)
    blurred = metric.score_model(Reconstructor(lambda x: mean_img.expand_as(x)), ctx)
    assert blurred["psnr"] == pytest.approx(psnr_db(mean_img.expand_as(test_x), test_x, (-1.0, 1.0)), rel=1e-9)
    assert blurred["rfid"] > 10.0
    assert not metric.applies_to(DIGITS)  # method-specific: not run for every image method
    from gmbench.metrics.base import MetricSkipped

    with pytest.raises(MetricSkipped, match="no reconstruct"):
        metric.score_model(type("NoDecoder", (), {"name": "no-decoder"})(), ctx)


def test_rfid_without_extractor_weights_is_skipped_with_its_reason_and_psnr_stands(tmp_path):
    from gmbench.data.digits import Digits
    from gmbench.evaluate import _run_metric

    class Renamed(Digits):  # a dataset gmbench ships no feature extractor for
        name = "digits-renamed"

    ctx = EvalContext(dataset=Renamed(), n_samples=64, seed=0, cache_dir=str(tmp_path), split="test")
    entries = {e["name"]: e for e in _run_metric(ReconstructionQuality(), ctx, None, None,
                                                  method=Reconstructor(lambda x: x.clone()))}
    assert set(entries) == {"psnr", "rfid"}
    assert entries["psnr"]["value"] == pytest.approx(100.0) and "skipped" not in entries["psnr"]
    assert entries["rfid"]["value"] is None
    assert "train_feature_extractor.py --dataset digits-renamed" in entries["rfid"]["skipped"]


# ------------------------------------------------------------------ registration and conformance


def test_registered_with_its_metric_and_claims():
    import tomllib
    from pathlib import Path

    from gmbench.plugins import Registries, make_plugin_manager

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["gmbench"]["dc-ae"] == "gmbench_methods.autoencoders.dc_ae"
    reg = Registries(make_plugin_manager(extra_plugins=(dc_ae_module,), load_entrypoints=False))
    assert reg.methods.get("dc-ae") is DCAE
    assert (DCAE.family, DCAE.paper, DCAE.likelihood) == ("autoencoders", "2410.10733", "none")
    assert [(s.name, s.adjustable_nfe, s.default_nfe) for s in DCAE.samplers] == [("latent-gaussian", False, 1)]
    assert {o.name: o.direction for o in reg.metrics.get("reconstruction").outputs} == {"psnr": "higher", "rfid": "lower"}
    claim = reg.claims.get("dc-ae-residual-beats-plain-psnr-f8")
    assert (claim.a.method, claim.b.method, claim.metric) == ("dc-ae[f=8]", "dc-ae[f=8, residual=False]", "psnr")
    from gmbench.leaderboard import method_label

    assert method_label({"method": "dc-ae", "hparams": {"residual": False, "f": 8}}) == claim.b.method
    assert [type(m) for m in DCAE.extra_metrics] == [ReconstructionQuality]


class TestDCAEConformanceDigits(MethodConformance):
    method = DCAE
    dataset = "digits"


class TestDCAEConformanceDigitsPlainF8(MethodConformance):
    method = DCAE
    dataset = "digits"
    hparams = {"f": 8, "residual": False}


# ------------------------------------------------------------------ it learns (smoke budget)


def test_learns_digits_at_smoke_budget_and_reports_through_the_evaluator(tmp_path):
    torch.manual_seed(0)
    model = DCAE(SPEC, model_size=SMOKE.model_size, f=2)
    (report,) = train(model, DIGITS.split("train").x, SMOKE, "image", gen(0))
    assert report.flops <= SMOKE.flops_for("image") and report.steps > 50
    test_x = DIGITS.split("test").x
    mean_psnr = psnr_db(DIGITS.split("train").x.mean(0, keepdim=True).expand_as(test_x), test_x, (-1.0, 1.0))
    entries, costs = evaluate(model, DIGITS, SMOKE, list(DCAE.extra_metrics), seed=0, cache_dir=str(tmp_path))
    values = {e["name"]: e["value"] for e in entries}
    # measured (seed 0): ~19 dB against 11.4 dB for the mean image
    assert values["psnr"] > mean_psnr + 4.0, (values["psnr"], mean_psnr)
    assert values["rfid"] is not None and values["rfid"] > 0
    assert [(c["sampler"], c["nfe_counted"]) for c in costs] == [("latent-gaussian", 1)]
    assert counted_nfe(model, "latent-gaussian", 1, gen(1)) == 1
