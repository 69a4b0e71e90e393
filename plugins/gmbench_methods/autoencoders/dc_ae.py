"""DC-AE: Deep Compression Autoencoder (Chen et al. 2024, arXiv 2410.10733), stage 1.

**Residual autoencoding** (Sec. 3.2, Fig. 4). Every block that changes the resolution adds a
parameter-free shortcut to its learned path, so the learned path only has to model a residual
over a fixed rearrangement of the input:

* down (space-to-channel): ``x (C, H, W)`` -> ``pixel_unshuffle(x, 2)`` ``(4C, H/2, W/2)`` ->
  average consecutive groups of ``4C / C_out`` channels -> ``(C_out, H/2, W/2)``; added to the
  learned path ``pixel_unshuffle(conv3x3(x) -> C_out/4 channels)``;
* up (channel-to-space): ``x (C, H, W)`` -> repeat every channel ``4 C_out / C`` times ->
  ``pixel_shuffle(., 2)`` ``(C_out, 2H, 2W)``; added to ``pixel_shuffle(conv3x3(x) -> 4 C_out)``;
* the same shortcuts at factor 1 around the encoder's last convolution (channel averaging to
  the latent channels) and the decoder's first (channel duplication from them), as in the
  released code (``out_shortcut="averaging"``, ``in_shortcut="duplicating"``).

Space-to-channel followed by channel averaging maps a constant image to the same constant
(every unshuffled channel is the constant), and channel duplication followed by pixel shuffle
maps a constant latent to a constant image: the shortcuts carry the coarse content, which is
what keeps a deep compression trainable. ``residual=False`` removes every shortcut and leaves
the network otherwise identical (same parameters): the paper's ablation, a plain autoencoder.

**Network** (the released ``dc_ae.py`` layout, at CPU scale): encoder ``conv3x3 -> [ResBlocks,
down block] x log2(f) -> ResBlocks -> conv3x3 to the latent channels``; decoder the mirror
image, ending ``RMSNorm -> ReLU -> conv3x3``. ResBlock: ``x + RMSNorm(conv3x3(SiLU(conv3x3(x))))``
with the RMS norm over channels per pixel (the released code's ``trms2d``). Widths per stage are
``w_i = base * min(2^i, 4)``, ``base`` and ResBlocks per stage from the shared U-Net preset at the
budget's size (tiny 32 / 1, small 48 / 1, base 64 / 2, large 128 / 2) rather than the paper's
(128 ... 1024 channels, EfficientViT blocks at low resolution); no attention.

**Compression**: spatial factor ``f`` (a power of two dividing the image sides; digits 8x8:
f2 -> 4x4 latents, f4 -> 2x2, f8 -> 1x1), latent channels ``c`` (``latent_channels``;
``"auto"``: the smallest power of two >= ``C f^2 / 4``, i.e. a quarter as many latent numbers as
pixels: 1, 4, 16 channels for f2, f4, f8 on one-channel images; it must divide the deepest
width).

**Training** (the paper's stage 1, "low-resolution full training", only): a pixel
reconstruction loss, L1 by default (``loss="l2"`` for MSE). The paper adds a perceptual (LPIPS)
loss in stage 1 and a GAN loss in its stage 3 (local refinement); neither is used here: no
LPIPS weights offline, and stage 3 only sharpens details. Adam at 1e-3 (the paper trains far
longer at 6.4e-5). Stage 2 (high-resolution latent adaptation) is for resolutions far above
gmbench's.

**As a gmbench method** it must generate. Samples (sampler ``latent-gaussian``, NFE 1: one
decoder call) are decoded draws from a full-covariance Gaussian fitted to the encoded training
data; the fit is a running average of the latents' first and second moments over the training
batches (decay ``min(0.99, (1 + k) / (10 + k))`` at step ``k``, i.e. about the last hundred
steps' latents, computed inside the metered step). This is a **diagnostic**, not the paper's use
(the paper trains a latent diffusion model on the latents; that is ``ldm``). The primary report
is reconstruction quality: :class:`ReconstructionQuality` (``psnr``, and ``rfid``, gmbench's FID
of reconstructions of the held-out split against that split), listed in ``extra_metrics``.

**API for latent models** (``ldm``, ``mar``): ``encode(x) -> z`` of shape
``(N, *latent_shape)``, ``decode(z) -> x`` (unclamped), ``reconstruct(x)`` (clamped to the data
range), ``latent_shape``, ``reconstruction_loss(x) -> (loss, z)`` for training it as another
method's first stage, and the latent moments ``latent_mean()`` / ``latent_std()`` (per latent
element, from the running fit that ``latent-gaussian`` samples; ``ldm`` and ``mar`` scale by one
scalar ``1 / sigma_hat`` instead, as LDM does). See ``docs/methods/dc-ae.md``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gmbench import hookimpl
from gmbench.data.base import DataSpec
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage, backbone_label
from gmbench.metrics.base import SKIPPED_OUTPUTS, EvalContext, Metric, MetricOutput, MetricSkipped

LOSSES = ("l1", "l2")
MAX_WIDTH_MULT = 4
PRIOR_DECAY = 0.99
PSNR_MSE_FLOOR = 1e-10


# -- the shortcuts (Sec. 3.2) ------------------------------------------------------------------


def space_to_channel(x: torch.Tensor, out_channels: int, factor: int = 2) -> torch.Tensor:
    """Pixel-unshuffle by ``factor``, then average consecutive groups of channels down to
    ``out_channels`` (the down blocks' shortcut; ``factor=1``: channel averaging only)."""
    y = F.pixel_unshuffle(x, factor) if factor > 1 else x
    b, c, h, w = y.shape
    if c % out_channels:
        raise MethodError(f"dc-ae: {c} channels cannot be averaged in groups down to {out_channels}")
    return y.reshape(b, out_channels, c // out_channels, h, w).mean(2)


def channel_to_space(x: torch.Tensor, out_channels: int, factor: int = 2) -> torch.Tensor:
    """Repeat every channel to ``out_channels * factor^2`` channels, then pixel-shuffle by
    ``factor`` (the up blocks' shortcut; ``factor=1``: channel duplication only)."""
    need, c = out_channels * factor**2, x.shape[1]
    if need % c:
        raise MethodError(f"dc-ae: {c} channels cannot be duplicated to {need}")
    y = x.repeat_interleave(need // c, dim=1)
    return F.pixel_shuffle(y, factor) if factor > 1 else y


# -- blocks -------------------------------------------------------------------------------------


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channels of each pixel, with a learned per-channel scale."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps) * self.weight[:, None, None]


def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class ResBlock(nn.Module):
    """``x + RMSNorm(conv3x3(SiLU(conv3x3(x))))`` (the released code's ResBlock)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv3x3(width, width), conv3x3(width, width, bias=False)
        self.norm = ChannelRMSNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(F.silu(self.conv1(x))))


class DownBlock(nn.Module):
    """Learned ``pixel_unshuffle(conv3x3(x))`` plus, if ``residual``, the space-to-channel shortcut."""

    def __init__(self, cin: int, cout: int, residual: bool, factor: int = 2) -> None:
        super().__init__()
        if cout % factor**2:
            raise MethodError(f"dc-ae: down block output {cout} must be a multiple of {factor ** 2}")
        self.conv, self.cout, self.factor, self.residual = conv3x3(cin, cout // factor**2), cout, factor, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pixel_unshuffle(self.conv(x), self.factor)
        return h + space_to_channel(x, self.cout, self.factor) if self.residual else h


class UpBlock(nn.Module):
    """Learned ``pixel_shuffle(conv3x3(x))`` plus, if ``residual``, the channel-to-space shortcut."""

    def __init__(self, cin: int, cout: int, residual: bool, factor: int = 2) -> None:
        super().__init__()
        self.conv, self.cout, self.factor, self.residual = conv3x3(cin, cout * factor**2), cout, factor, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pixel_shuffle(self.conv(x), self.factor)
        return h + channel_to_space(x, self.cout, self.factor) if self.residual else h


def stage_widths(base: int, stages: int) -> list[int]:
    """``w_i = base * min(2^i, 4)`` for ``i = 0..stages`` (the last is the deepest, the latent's grid)."""
    return [base * min(2**i, MAX_WIDTH_MULT) for i in range(stages + 1)]


class Encoder(nn.Module):
    """Image ``(N, C, H, W)`` -> latent ``(N, c, H/f, W/f)``."""

    def __init__(self, in_channels: int, latent_channels: int, widths: list[int], depth: int, residual: bool) -> None:
        super().__init__()
        self.project_in = conv3x3(in_channels, widths[0])
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            layers += [ResBlock(w) for _ in range(depth)]
            if i < len(widths) - 1:
                layers.append(DownBlock(w, widths[i + 1], residual))
        self.stages = nn.Sequential(*layers)
        self.project_out = conv3x3(widths[-1], latent_channels)
        self.latent_channels, self.residual = latent_channels, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.project_in(x))
        z = self.project_out(h)
        return z + space_to_channel(h, self.latent_channels, factor=1) if self.residual else z


class Decoder(nn.Module):
    """Latent ``(N, c, H/f, W/f)`` -> image ``(N, C, H, W)`` (unclamped)."""

    def __init__(self, out_channels: int, latent_channels: int, widths: list[int], depth: int, residual: bool) -> None:
        super().__init__()
        self.project_in = conv3x3(latent_channels, widths[-1])
        layers: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            if i < len(widths) - 1:
                layers.append(UpBlock(widths[i + 1], widths[i], residual))
            layers += [ResBlock(widths[i]) for _ in range(depth)]
        self.stages = nn.Sequential(*layers)
        self.out_norm = ChannelRMSNorm(widths[0])
        self.project_out = conv3x3(widths[0], out_channels)
        self.width, self.residual = widths[-1], residual

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project_in(z)
        if self.residual:
            h = h + channel_to_space(z, self.width, factor=1)
        return self.project_out(F.relu(self.out_norm(self.stages(h))))


class LatentGaussian(nn.Module):
    """Running first and second moments of the encoded training data (buffers, checkpointed)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("second", torch.eye(dim))

    @torch.no_grad()
    def update(self, z: torch.Tensor, decay: float) -> None:
        z = z.flatten(1).to(self.mean.dtype)
        self.mean.lerp_(z.mean(0), 1.0 - decay)
        self.second.lerp_(z.T @ z / z.shape[0], 1.0 - decay)

    def covariance(self) -> torch.Tensor:
        cov = self.second.double() - torch.outer(self.mean.double(), self.mean.double())
        return 0.5 * (cov + cov.T)


# -- the reconstruction metric -------------------------------------------------------------------


def psnr_db(recon: torch.Tensor, x: torch.Tensor, value_range: tuple[float, float]) -> float:
    """Mean over images of ``10 log10(peak^2 / MSE_i)``, ``peak`` the data range's width
    (PSNR of images scaled to [0, 1]); a perfect image counts ``MSE = 1e-10`` (100 dB)."""
    lo, hi = value_range
    mse = ((recon.double() - x.double()) / (hi - lo)).pow(2).flatten(1).mean(1).clamp_min(PSNR_MSE_FLOOR)
    return float((-10.0 * torch.log10(mse)).mean())


class ReconstructionQuality(Metric):
    """PSNR and rFID of an autoencoder's reconstructions of the held-out split.

    ``psnr`` (dB, higher is better, :func:`psnr_db`) and ``rfid``: gmbench's FID
    (:class:`gmbench.metrics.images.ImageFidelity`, the default extractor ``gmbench-cnn``) of the
    reconstructions of the held-out split (the first ``max_examples`` images, the same ones FID
    uses as its reference) against that split, as DC-AE's rFID compares reconstructions with
    their originals. Methods without ``reconstruct(x)`` are skipped.

    It is a *method-specific* metric: the methods that report it list it in their class attribute
    ``extra_metrics``. ``applies_to`` is False so that, registered for its outputs' directions
    (boards and ``gmbench claims`` read them from the metric registry), it neither runs for nor
    enters the protocol fingerprint of every image run. The host scores a method's
    ``extra_metrics`` after the shared metrics (``gmbench/runner.py``) and records them under
    ``method_metrics``.
    """

    name = "reconstruction"
    version = "1"
    kind = "model"
    modalities = ("image",)
    description = "PSNR and rFID of an autoencoder's reconstructions of the held-out split"
    outputs = (
        MetricOutput("psnr", "higher", "mean PSNR of reconstructions of the held-out split, data range as peak", "dB"),
        MetricOutput("rfid", "lower", "FID of reconstructions of the held-out split against that split"),
    )
    max_examples = 10000
    batch_size = 500

    def applies_to(self, dataset) -> bool:
        return False  # method-specific: see the class doc

    def _reference_ctx(self, ctx: EvalContext) -> EvalContext:
        from dataclasses import replace

        options = {**ctx.options, "fid_reference_split": ctx.split, "fid_reference_max": self.max_examples}
        return replace(ctx, options=options, memo={})

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        from gmbench.metrics.images import ImageFidelity

        return {"split": ctx.split, "max_examples": self.max_examples, "psnr_peak": "data range",
                "psnr_mse_floor": PSNR_MSE_FLOOR, "rfid": ImageFidelity().fingerprint_fields(self._reference_ctx(ctx))}

    def score_model(self, method, ctx: EvalContext) -> dict:
        from gmbench.metrics.images import ImageFidelity

        reconstruct = getattr(method, "reconstruct", None)
        if not callable(reconstruct):
            raise MetricSkipped(f"method {method.name!r} has no reconstruct(x)")
        spec = ctx.dataset.spec()
        fidelity, ref_ctx = ImageFidelity(), self._reference_ctx(ctx)
        _, x = fidelity.reference(ref_ctx)  # the images FID compares with, reconstructed here
        with torch.no_grad():
            recon = torch.cat([reconstruct(chunk.to(ctx.device)).cpu() for chunk in x.split(self.batch_size)])
        out = {"psnr": psnr_db(recon, x, spec.value_range), "rfid": None}
        try:
            out["rfid"] = fidelity.score_samples(recon, ref_ctx)["fid"]
        except MetricSkipped as exc:  # no extractor weights here: PSNR still stands, the record says why
            out[SKIPPED_OUTPUTS] = {"rfid": str(exc)}
        return out


# -- the method ----------------------------------------------------------------------------------


class DCAE(Method):
    """Deep Compression Autoencoder, stage 1, with a Gaussian latent sampler (see module doc).

    Args:
        data: the dataset's spec (images).
        model_size: preset for the widths and depth (the shared U-Net's ``channels`` and
            ``num_res_blocks``).
        f: spatial compression, a power of two dividing both image sides (8x8 digits: 2, 4, 8).
        latent_channels: channels of the latent; ``"auto"``: smallest power of two
            >= ``C f^2 / 4``. Must divide the deepest width.
        residual: residual autoencoding (the paper's shortcuts); False is the paper's ablation,
            the same network without shortcuts.
        loss: reconstruction loss, ``"l1"`` (the paper's pixel loss) or ``"l2"``.
        lr: Adam learning rate.
    """

    name = "dc-ae"
    family = "autoencoders"
    paper = "2410.10733"
    title = "Deep Compression Autoencoder for Efficient High-Resolution Diffusion Models"
    modalities = ("image",)
    samplers = (SamplerInfo("latent-gaussian", adjustable_nfe=False, deterministic=True, default_nfe=1),)
    likelihood = "none"
    #: method-specific metrics (see ReconstructionQuality): the host should score these too
    extra_metrics = (ReconstructionQuality(),)

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        f: int = 4,
        latent_channels: int | str = "auto",
        residual: bool = True,
        loss: str = "l1",
        lr: float = 1e-3,
    ) -> None:
        super().__init__(data, model_size)
        from gmbench.backbones import size_config

        c, h, w = data.shape
        if isinstance(f, bool) or not isinstance(f, int) or f < 1 or f & (f - 1):
            raise MethodError(f"dc-ae: f must be a power of two (1, 2, 4, 8, ...), not {f!r}")
        if h % f or w % f:
            raise MethodError(f"dc-ae: f={f} does not divide the image size {h}x{w}")
        if loss not in LOSSES:
            raise MethodError(f"dc-ae: loss must be one of {', '.join(LOSSES)}, not {loss!r}")
        cfg = size_config("unet", model_size)
        stages = int(math.log2(f))
        widths = stage_widths(cfg["channels"], stages)
        if latent_channels == "auto":
            latent_channels = 1 << max(0, math.ceil(math.log2(c * f * f / 4)))
        if isinstance(latent_channels, bool) or not isinstance(latent_channels, int) or latent_channels < 1:
            raise MethodError(f"dc-ae: latent_channels must be 'auto' or a positive integer, not {latent_channels!r}")
        if widths[-1] % latent_channels:
            ok = [d for d in range(1, widths[-1] + 1) if widths[-1] % d == 0]
            raise MethodError(f"dc-ae: latent_channels={latent_channels} must divide the deepest width {widths[-1]} "
                              f"(at {model_size!r}, f={f}: one of {ok})")
        self.f, self.latent_channels, self.residual, self.loss, self.lr = f, latent_channels, bool(residual), loss, float(lr)
        self.widths = widths
        depth = cfg["num_res_blocks"]
        self.encoder = Encoder(c, latent_channels, widths, depth, self.residual)
        self.decoder = Decoder(c, latent_channels, widths, depth, self.residual)
        self.prior = LatentGaussian(math.prod(self.latent_shape))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(c, H/f, W/f)``: the shape of one latent."""
        _, h, w = self.data.shape
        return (self.latent_channels, h // self.f, w // self.f)

    def modules(self) -> dict[str, nn.Module]:
        # the prior holds buffers only (no optimizer trains it): listed to move and checkpoint it
        return {"encoder": self.encoder, "decoder": self.decoder, "prior": self.prior}

    def backbone(self) -> str:
        """``"DC-AE(tiny, 0.8M, 2 nets)"``: encoder and decoder (the prior has no parameters)."""
        return backbone_label("DC-AE", self.model_size, self.num_parameters(), nets=2)

    # -- the autoencoder -----------------------------------------------------------------------

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.data.shape):
            raise MethodError(f"dc-ae: expected images of shape (N, {', '.join(map(str, self.data.shape))}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> latents ``(N, *latent_shape)``."""
        self._check(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, *latent_shape)`` -> images ``(N, C, H, W)``, not clamped."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise MethodError(f"dc-ae: expected latents of shape (N, {', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}")
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` clamped to the data range."""
        out = self.decode(self.encode(x))
        return out.clamp(*self.data.value_range) if self.data.value_range is not None else out

    def reconstruction_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, z)``: the stage-1 pixel loss of ``x`` and its latents (for composing DC-AE
        into another method's first stage)."""
        z = self.encode(x)
        err = self.decode(z) - x
        return (err.abs().mean() if self.loss == "l1" else err.pow(2).mean()), z

    def latent_mean(self) -> torch.Tensor:
        """Mean of the encoded training data per latent element, shape ``latent_shape``."""
        return self.prior.mean.reshape(self.latent_shape)

    def latent_std(self) -> torch.Tensor:
        """Standard deviation of the encoded training data per latent element, shape ``latent_shape``."""
        return self.prior.covariance().diagonal().clamp_min(0).sqrt().float().reshape(self.latent_shape)

    # -- training ------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        return [Stage("autoencoder", (OptimizerSpec("adam", ("encoder", "decoder"), lr=self.lr),))]

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        loss, z = self.reconstruction_loss(batch)
        decay = 0.0 if step == 0 else min(PRIOR_DECAY, (1 + step) / (10 + step))
        self.prior.update(z.detach(), decay)
        return {"adam": loss}

    # -- sampling: decoded Gaussian latents (a diagnostic) ------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        self.sampler(sampler)  # unknown names fail with a suggestion
        # a symmetric square root from the eigendecomposition, eigenvalues clamped at 0: the
        # fitted covariance is PSD in exact arithmetic but can come out slightly indefinite
        # (float32 running moments of latents with a large mean and a tiny spread in some
        # directions), and a Cholesky factor then fails outright (the plain AE at f=8 did)
        evals, evecs = torch.linalg.eigh(self.prior.covariance())
        root = evecs * evals.clamp_min(0).sqrt()
        eps = torch.randn(n, len(evals), generator=generator, device=generator.device, dtype=torch.float64).to(self.device)
        z = (self.prior.mean.double() + eps @ root.T).float().reshape(n, *self.latent_shape)
        x = self.decoder(z)
        return x.clamp(*self.data.value_range) if self.data.value_range is not None else x


@hookimpl
def gmbench_register_methods(register):
    register(DCAE)


@hookimpl
def gmbench_register_metrics(register):
    register(ReconstructionQuality())


@hookimpl
def gmbench_register_claims(register):
    """DC-AE T1 (arXiv 2410.10733), the residual-autoencoding ablation: at high spatial
    compression the shortcuts keep reconstruction quality where the same network without them
    degrades. Checked at f = 8 on digits (8x8 -> 1x1 latents)."""
    from gmbench.claims import Cell, PaperClaim

    dcae, plain = Cell("dc-ae[f=8]"), Cell("dc-ae[f=8, residual=False]")
    register(PaperClaim(
        name="dc-ae-residual-beats-plain-psnr-f8", relation="better", metric="psnr", dataset="digits",
        a=dcae, b=plain, paper="2410.10733", table="DC-AE T1 (residual autoencoding ablation)",
        statement="At f=8, DC-AE with residual autoencoding reconstructs with higher PSNR than the same AE without shortcuts",
    ))
    register(PaperClaim(
        name="dc-ae-residual-beats-plain-rfid-f8", relation="better", metric="rfid", dataset="digits",
        a=dcae, b=plain, paper="2410.10733", table="DC-AE T1 (residual autoencoding ablation)",
        statement="At f=8, DC-AE with residual autoencoding has lower rFID than the same AE without shortcuts",
    ))
