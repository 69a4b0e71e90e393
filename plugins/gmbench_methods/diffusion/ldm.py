"""LDM: Latent Diffusion Models (Rombach, Blattmann, Lorenz, Esser & Ommer 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752),
unconditional or class-conditional, at CPU scale.

Two stages inside one training budget, each with a stated share of its FLOPs:

**Stage 1, ``autoencoder``** (share ``ae_share``, default 0.5; Sec. 3.1). An encoder ``E`` and
a decoder ``D`` with spatial downsampling factor ``f`` (digits 8x8 with the default ``f = 2``:
4x4 latents), trained to reconstruct. Two choices (``autoencoder``):

* ``"kl"`` (default): the paper's KL-regularised autoencoder ("KL-reg"),
  ``q_E(z|x) = N(mu(x), diag sigma^2(x))``, loss per image
  ``sum_pixels |x - D(z)| + kl_weight * KL(q_E(z|x) || N(0, I))`` with ``z ~ q_E(z|x)`` and
  ``KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)``; ``kl_weight = 1e-6`` as in the
  paper's f = 4 / 8 KL models (network and details: :mod:`.kl_autoencoder`). Its base width
  ``ae_channels`` defaults to half the U-Net preset's (tiny: 16, small: 24): the paper's
  autoencoders are run once per sample and are far cheaper per image than its U-Nets, and under
  one budget the first stage's cost per step decides how far it trains. Measured at ``smoke``
  on digits (seed 0, FID of 256 DDIM samples at NFE 50 against train, ``docs/methods/ldm.md``):
  width 32 (the U-Net's) at share 0.3 / 23 autoencoder steps gave FID 257 (reconstruction rFID
  245), width 16 at shares 0.4 / 0.5 / 0.6 gave 55 / 42 / 61, width 8 at 0.5 gave 52;
* ``"dc-ae"``: DC-AE's residual autoencoder (arXiv 2410.10733, :mod:`gmbench_methods.autoencoders.dc_ae`,
  built from its classes) with its own L1/L2 reconstruction loss; deterministic ``z = E(x)``.

The paper's first stage adds a perceptual (LPIPS) loss and a patch-GAN loss; neither is used
(no LPIPS/discriminator weights offline, and at 8x8 the pixel loss is the whole picture):
reconstruction is L1 (default) or L2 (``rec_loss``).

**Stage 2, ``latent``** (share ``1 - ae_share``; Sec. 3.2, Eq. 2). The autoencoder is frozen.
At the stage's start (``on_stage_start``) the latents of the training images are encoded
(``z ~ q_E(z|x)``, at most ``scale_examples`` of them, the generator the host passes) and the
*scale factor* is set from their component-wise standard deviation (appendix G, where the
variance is estimated from the first batch of data)::

    mu_hat = 1/(bchw) sum z,   sigma_hat^2 = 1/(bchw) sum (z - mu_hat)^2,   scale = 1 / sigma_hat

(one scalar over all latent elements; the paper uses its first batch, here up to
``scale_examples`` training images). The host meters ``on_stage_start`` under
``gmbench.flops.count_cost`` against the latent stage's allowance (``training.train``:
``report.prepare_flops``, subtracted from the stage's step allowance), so this encoding pass
is paid for from the budget. Every step then encodes its batch with the frozen encoder
(``z = scale * E(x)`` sampled from the posterior, as the released ``get_first_stage_encoding``;
under ``torch.no_grad``) and trains an epsilon-prediction DDPM on the latents, Eq. 2::

    L_LDM = E_{z = scale * E(x), eps ~ N(0, I), t ~ U{1..T}} || eps - eps_theta(z_t, t) ||^2,
    z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps

(squared error averaged over dimensions). The encoding runs inside the metered step, so its
FLOPs are counted with the U-Net's. The DDPM machinery is ``ddpm``'s
(:class:`gmbench_methods.diffusion.ddpm.DDPM` on a latent :class:`DataSpec`, imported, not
copied): the shared U-Net (``gmbench.backbones.UNet``, same size preset as ``ddpm``, zero-
initialised output layer), Adam with gradient clipping at 1, EMA of the weights for sampling
(the paper's configs use an EMA too). The noise schedule is LDM's ``linear`` schedule of the
released code, ``beta_t = (sqrt(beta_start) + (t-1)/(T-1) (sqrt(beta_end) - sqrt(beta_start)))^2``,
``beta_start = 0.0015``, ``beta_end = 0.0195``, ``T = 1000`` (the unconditional CelebA-HQ /
LSUN / FFHQ configs).

**Samplers** (latents from ``z_T ~ N(0, I)``, then ``x = clamp(D(z_0 / scale))``):

* ``ddim`` (eta = 0, the paper's main sampler): DDIM Eq. 12 on the even sub-sequence of
  ``ddpm`` (``schedules.space_timesteps``), ``z_s = sqrt(abar_s) z0_pred + sqrt(1 - abar_s) eps_theta``
  with ``z0_pred = (z_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)``;
* ``ancestral``: DDPM Algorithm 2 with ``sigma_t^2 = beta~_t`` (the released LDM code's
  posterior variance, ``v_posterior = 0``), respaced to the sub-sequence as ``ddpm``'s
  ``ancestral-tilde``.

**NFE** counts every network call of a sample, the decoder's included: NFE ``n`` is ``n - 1``
denoising steps plus one decoder call (the host's audit, ``gmbench.evaluate.check_nfe``, counts
forward calls of every module in ``modules()`` and compares them with ``nfe * calls_per_step``
= ``nfe``; the count is exact). So ``ldm`` at NFE 10 takes 9 U-Net steps where ``ddpm`` takes 10.
Latent predictions are not clipped (latents have no fixed range); decoded images are clamped
to the data range.

**Likelihood: none.** A bound is possible in principle (the latent diffusion's variational
bound on ``-log p(z)`` plus the KL autoencoder's ``E_q[-log p(x|z)] + KL``-style terms), but
it needs a proper decoder likelihood ``p(x|z)``: the stage-1 loss is an L1 distance with no
fitted scale (the paper's learned log-variance is fixed here), so any scale would be a choice
of ours, not the model's, and the paper reports no likelihood for LDMs.

**Class conditioning** (``class_cond=True``, on a labelled dataset such as digits; default off,
so the boards' ``ldm`` is the unconditional model the other methods are compared with). The
paper's class-conditional ImageNet LDM (Sec. 4.3.1, Table 3) conditions on the class and
samples with classifier-free guidance (Ho & Salimans, arXiv 2207.12598). Here the class
enters the latent U-Net as a learned embedding added to the time embedding (the
``gmbench.backbones.UNet`` route, the issue's "or embedding"; the paper feeds a class
embedding to cross-attention, which at one token amounts to a learned per-class bias of the
attention output). Training drops the label to the null class with probability
``p_uncond`` (default 0.1, the guidance paper's range 0.1-0.2), so one network learns
``eps(z_t, t, c)`` and ``eps(z_t, t, null)``; the host passes the batch's labels
(``gmbench.conditioning``). Samplers of a conditional model: ``ddim`` and ``ancestral`` given
the class (guidance scale 1: one U-Net call a step), and ``ddim-cfg``, DDIM with guidance
``eps~ = eps(z, null) + s (eps(z, c) - eps(z, null))`` at ``s = guidance`` (default 1.5, the
paper's Table 3 setting): two U-Net calls a step, declared (``calls_per_step=2``) and counted.
The host chooses the classes (balanced over the dataset's, shuffled by the seed) and the boards
mark the run ``class-conditional``.

**Not implemented**: cross-attention conditioning on text or layouts, the VQ-regularised
autoencoder, LPIPS / GAN losses (above). Images only: a 2-D toy point has no spatial structure
to compress, so toy2d is refused with an error.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.backbones import UNet, size_config
from gmbench.conditioning import guidance_options
from gmbench.data.base import DataSpec
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage, backbone_label

from .ddpm import DDPM
from .kl_autoencoder import DiagonalGaussian, KLDecoder, KLEncoder, level_widths
from .schedules import NoiseSchedule

AUTOENCODERS = ("kl", "dc-ae")
REC_LOSSES = ("l1", "l2")
# classifier-free guidance: label dropout in training (2207.12598 uses 0.1-0.2) and the
# sampling scale of LDM's class-conditional ImageNet results (Table 3)
DEFAULT_P_UNCOND = 0.1
DEFAULT_GUIDANCE = 1.5
# images encoded per chunk in on_stage_start (memory only)
SCALE_CHUNK = 512


def ldm_linear_schedule(T: int, beta_start: float, beta_end: float) -> NoiseSchedule:
    """LDM's ``linear`` schedule: betas linear in ``sqrt(beta)`` from ``beta_start`` to ``beta_end``."""
    if not (isinstance(T, int) and not isinstance(T, bool) and T >= 2):
        raise MethodError(f"ldm: T must be an integer >= 2, got {T!r}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise MethodError(f"ldm: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
    return NoiseSchedule(betas)


class LatentScale(nn.Module):
    """Holds the latent scale factor ``1 / sigma_hat`` as a buffer (checkpointed with the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))  # float32: every device holds it


class GuidedDenoiser(nn.Module):
    """``eps(z, t)`` of a class-conditional U-Net for fixed classes: ``eps(z, t, c)`` at guidance
    1, else classifier-free guidance ``eps(z, t, null) + s (eps(z, t, c) - eps(z, t, null))``
    (two calls of the wrapped network, each counted by the host). Not in ``modules()``: it
    holds no weights of its own."""

    def __init__(self, net: nn.Module, classes: torch.Tensor, null_class: int, scale: float) -> None:
        super().__init__()
        self.net, self.classes, self.scale = net, classes, scale
        self.null = torch.full_like(classes, null_class)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = self.net(z, t, self.classes)
        if self.scale == 1.0:
            return cond
        uncond = self.net(z, t, self.null)
        return uncond + self.scale * (cond - uncond)


class LDM(Method):
    """Unconditional latent diffusion: an autoencoder, then epsilon-prediction DDPM on its
    scaled latents (see the module docstring for every equation).

    Args:
        data: the dataset's spec (images; toy2d is refused).
        model_size: preset of the latent U-Net (the same as ``ddpm``'s) and of the autoencoder's widths.
        autoencoder: ``"kl"`` (the paper's KL-regularised autoencoder) or ``"dc-ae"``.
        f: spatial downsampling factor, a power of two dividing the image sides (digits: 2 -> 4x4).
        latent_channels: latent channels; ``"auto"``: the smallest power of two >= ``C f^2 / 4``
            (a quarter as many latent numbers as pixels: 1 for f = 2 on gray images).
        kl_weight: weight of the KL term relative to the per-image summed reconstruction error
            (``"kl"`` only; paper: 1e-6).
        rec_loss: ``"l1"`` (default) or ``"l2"`` reconstruction loss.
        ae_share: share of the training FLOPs for the autoencoder stage (the rest trains the
            latent diffusion model, including the scale estimate's encoding pass); 0.5 measured
            best at ``smoke`` on digits among 0.3-0.6 (module doc).
        ae_channels: base width of the KL autoencoder (``"auto"``: half the U-Net preset's
            ``channels``, at least 8; level widths ``ae_channels * channel_mult``); DC-AE uses
            its own preset widths.
        ae_lr: Adam learning rate of the autoencoder.
        lr: Adam learning rate of the latent U-Net (``ddpm``'s image default, 1e-3).
        T, beta_start, beta_end: LDM's sqrt-linear noise schedule (paper: 1000, 0.0015, 0.0195).
        ema_decay: EMA of the U-Net's weights for sampling (``ddpm``'s warm-up rule); 0 turns it off.
        scale_examples: training images encoded to estimate ``sigma_hat`` at the latent stage's start.
        class_cond: train and sample given the dataset's class labels (module doc); needs labels.
        p_uncond: probability that a training label is replaced by the null class (``class_cond``;
            default 0.1).
        guidance: classifier-free guidance scale of the ``ddim-cfg`` sampler (``class_cond``; default
            1.5, the paper's; 1 = none).
    """

    name = "ldm"
    family = "diffusion"
    paper = "2112.10752"
    title = "High-Resolution Image Synthesis with Latent Diffusion Models"
    modalities = ("image",)
    samplers = (
        SamplerInfo("ddim", adjustable_nfe=True, deterministic=True, default_nfe=50, params={"eta": 0.0}),
        SamplerInfo("ancestral", adjustable_nfe=True, deterministic=False, default_nfe=1001,
                    params={"sigma2": "beta_tilde"}),
    )
    likelihood = "none"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        autoencoder: str = "kl",
        f: int = 2,
        latent_channels: int | str = "auto",
        kl_weight: float = 1e-6,
        rec_loss: str = "l1",
        ae_share: float = 0.5,
        ae_lr: float = 1e-3,
        lr: float = 1e-3,
        T: int = 1000,
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        ema_decay: float | None = 0.9999,
        scale_examples: int = 1024,
        ae_channels: int | str = "auto",
        class_cond: bool = False,
        p_uncond: float | None = None,
        guidance: float | None = None,
    ) -> None:
        if data.modality != "image" or len(data.shape) != 3:
            raise MethodError(
                f"ldm: latent diffusion needs images (C, H, W) to compress spatially; {data.name!r} is "
                f"{data.modality!r} data of shape {tuple(data.shape)} (use ddpm for 2-D toy data)")
        super().__init__(data, model_size)
        c, h, w = data.shape
        if autoencoder not in AUTOENCODERS:
            raise MethodError(f"ldm: autoencoder must be one of {', '.join(AUTOENCODERS)}, not {autoencoder!r}")
        if isinstance(f, bool) or not isinstance(f, int) or f < 1 or f & (f - 1):
            raise MethodError(f"ldm: f must be a power of two (1, 2, 4, 8, ...), not {f!r}")
        if h % f or w % f:
            raise MethodError(f"ldm: f={f} does not divide the image size {h}x{w}")
        if rec_loss not in REC_LOSSES:
            raise MethodError(f"ldm: rec_loss must be one of {', '.join(REC_LOSSES)}, not {rec_loss!r}")
        if not 0.0 < float(ae_share) < 1.0:
            raise MethodError(f"ldm: ae_share must be in (0, 1), got {ae_share!r}")
        if not float(kl_weight) >= 0.0:
            raise MethodError(f"ldm: kl_weight must be >= 0, got {kl_weight!r}")
        if isinstance(scale_examples, bool) or not isinstance(scale_examples, int) or scale_examples < 2:
            raise MethodError(f"ldm: scale_examples must be an integer >= 2, got {scale_examples!r}")
        if latent_channels == "auto":
            latent_channels = 1 << max(0, math.ceil(math.log2(c * f * f / 4)))
        if isinstance(latent_channels, bool) or not isinstance(latent_channels, int) or latent_channels < 1:
            raise MethodError(f"ldm: latent_channels must be 'auto' or a positive integer, not {latent_channels!r}")
        self.autoencoder, self.f, self.latent_channels = autoencoder, f, latent_channels
        self.kl_weight, self.rec_loss = float(kl_weight), rec_loss
        self.ae_share, self.ae_lr, self.lr = float(ae_share), float(ae_lr), float(lr)
        self.scale_examples = scale_examples
        if ae_channels == "auto":
            ae_channels = max(8, size_config("unet", model_size)["channels"] // 2)
        if isinstance(ae_channels, bool) or not isinstance(ae_channels, int) or ae_channels < 4 or ae_channels % 4:
            raise MethodError(f"ldm: ae_channels must be 'auto' or a positive multiple of 4, not {ae_channels!r}")
        self.ae_channels = ae_channels
        self.latent_shape = (latent_channels, h // f, w // f)

        if autoencoder == "kl":
            widths, depth = level_widths(model_size, f, self.ae_channels)
            self.encoder: nn.Module = KLEncoder(c, latent_channels, widths, depth)
            self.decoder: nn.Module = KLDecoder(c, latent_channels, widths, depth)
            self.dcae = None
        else:
            from gmbench_methods.autoencoders.dc_ae import DCAE

            self.dcae = DCAE(data, model_size, f=f, latent_channels=latent_channels, loss=rec_loss, lr=ae_lr)
            self.encoder, self.decoder = self.dcae.encoder, self.dcae.decoder

        # the latent DDPM: ddpm's code on a latent data spec, with LDM's schedule
        latent_spec = DataSpec(name=f"{data.name}-latents", modality="image", shape=self.latent_shape)
        self.diffusion = DDPM(latent_spec, model_size, T=T, lr=lr, ema_decay=ema_decay, clip_denoised=False)
        self.diffusion.schedule = ldm_linear_schedule(T, float(beta_start), float(beta_end))
        self.T = T
        options = guidance_options("ldm", data, class_cond, p_uncond, guidance, DEFAULT_P_UNCOND, DEFAULT_GUIDANCE)
        if options is not None:
            self._make_conditional(data, model_size, *options)
        self.latent_scale = LatentScale()
        #: what the last on_stage_start("latent") did: images encoded, sigma_hat, scale
        self.scale_report: dict = {}

    def _make_conditional(self, data: DataSpec, model_size: str, p_uncond: float, guidance: float) -> None:
        """Swap in a class-conditional latent U-Net (zero output layer and EMA as ``ddpm``'s) and
        the conditional samplers (module doc); the options are checked (``guidance_options``)."""
        d = self.diffusion
        d.net = UNet(self.latent_channels, self.latent_channels, self.latent_shape[1:], size=model_size,
                     num_classes=data.num_classes)
        nn.init.zeros_(d.net.out.weight)
        nn.init.zeros_(d.net.out.bias)
        d.ema = copy.deepcopy(d.net).requires_grad_(False) if d.ema is not None else None
        self.class_conditional, self.p_uncond, self.guidance = True, p_uncond, guidance
        self.null_class = data.num_classes
        self.samplers = (
            SamplerInfo("ddim", adjustable_nfe=True, deterministic=True, default_nfe=50,
                        params={"eta": 0.0, "guidance": 1.0}),
            SamplerInfo("ancestral", adjustable_nfe=True, deterministic=False, default_nfe=1001,
                        params={"sigma2": "beta_tilde", "guidance": 1.0}),
            SamplerInfo("ddim-cfg", adjustable_nfe=True, deterministic=True, default_nfe=50, calls_per_step=2.0,
                        params={"eta": 0.0, "guidance": self.guidance}),
        )

    # -- networks ---------------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        out = {"encoder": self.encoder, "decoder": self.decoder, "net": self.diffusion.net,
               "scale": self.latent_scale}
        if self.diffusion.ema is not None:
            out["ema"] = self.diffusion.ema  # no optimizer names it
        return out

    def to(self, device: torch.device | str) -> "LDM":
        super().to(device)
        self.diffusion.to(device)
        return self

    def num_parameters(self) -> int:
        nets = (self.encoder, self.decoder, self.diffusion.net)  # the EMA shadow is not capacity
        return sum(p.numel() for m in nets for p in m.parameters())

    def backbone(self) -> str:
        """``"UNet+<AE>(tiny, ...M, 3 nets)"``: the latent U-Net, encoder and decoder."""
        ae = "KL-AE" if self.autoencoder == "kl" else "DC-AE"
        return backbone_label(f"UNet+{ae}", self.model_size, self.num_parameters(), nets=3)

    @property
    def scale(self) -> float:
        """The latent scale factor ``1 / sigma_hat`` (1 before the latent stage starts)."""
        return float(self.latent_scale.scale)

    # -- the autoencoder ----------------------------------------------------------------------------

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """``q_E(z|x)`` of the KL autoencoder (one encoder call)."""
        return DiagonalGaussian(self.encoder(x))

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled latents of images: ``z ~ q_E(z|x)`` (KL) or ``E(x)`` (DC-AE); one encoder call."""
        if self.autoencoder == "kl":
            return self.posterior(x).sample(generator)
        return self.dcae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (unclamped) from unscaled latents; one decoder call."""
        return self.decoder(z)

    def autoencoder_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Stage-1 loss: per-pixel mean reconstruction error plus ``kl_weight / D`` times the KL."""
        if self.autoencoder == "dc-ae":
            return self.dcae.reconstruction_loss(x)[0]
        q = self.posterior(x)
        err = self.decode(q.sample()) - x
        rec = err.abs() if self.rec_loss == "l1" else err.pow(2)
        per_image = rec.flatten(1).sum(1) + self.kl_weight * q.kl()
        return per_image.mean() / self.data.dims

    # -- training ---------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        d = self.diffusion
        return [
            Stage("autoencoder", (OptimizerSpec("ae", ("encoder", "decoder"), lr=self.ae_lr),), self.ae_share),
            Stage("latent", (OptimizerSpec("unet", ("net",), lr=self.lr, grad_clip=d.grad_clip),), 1.0 - self.ae_share),
        ]

    @torch.no_grad()
    def estimate_scale(self, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
        """Set and return ``1 / sigma_hat`` from the encoded ``x`` (appendix G; module doc)."""
        zs = [self.encode(x[i : i + SCALE_CHUNK], generator).double() for i in range(0, len(x), SCALE_CHUNK)]
        z = torch.cat(zs)
        sigma = float(((z - z.mean()) ** 2).mean().sqrt())
        if not math.isfinite(sigma) or sigma <= 0:
            raise MethodError(f"ldm: the encoded training data has standard deviation {sigma}: cannot scale the latents")
        self.latent_scale.scale.fill_(1.0 / sigma)
        self.scale_report = {"examples": len(x), "sigma_hat": sigma, "scale": 1.0 / sigma}
        return 1.0 / sigma

    def on_stage_start(self, stage: str, train_x: torch.Tensor, generator: torch.Generator):
        if stage != "latent":
            return None
        self.estimate_scale(train_x[: self.scale_examples], generator)
        return None  # the pixels stay the training data: each step encodes its batch

    def training_step(self, stage: str, batch: torch.Tensor, step: int, labels: torch.Tensor | None = None):
        if stage == "autoencoder":
            return {"ae": self.autoencoder_loss(batch)}
        with torch.no_grad():  # the frozen first stage, metered with the step
            z = self.encode(batch) * self.scale
        if not self.class_conditional:
            return {"unet": self.diffusion.training_step("denoise", z, step)["adam"]}
        return {"unet": self.conditional_loss(z, labels)}

    def conditional_loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 2 given the class, ``|| eps - eps_theta(z_t, t, c) ||^2``, with each label replaced
        by the null class with probability ``p_uncond`` (classifier-free guidance's training)."""
        d = self.diffusion
        drop = torch.rand(labels.shape, device=labels.device) < self.p_uncond
        c = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        t = torch.randint(1, d.T + 1, (z.shape[0],), device=z.device)
        eps = torch.randn_like(z)
        zt = d.schedule.q_sample(z, t, eps)
        return (d.net(zt, t.float() / d.T, c) - eps).pow(2).mean()

    def on_step_end(self, stage: str, step: int) -> None:
        if stage == "latent":
            self.diffusion.on_step_end("denoise", step)

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.diffusion.to(self.device)

    # -- sampling ----------------------------------------------------------------------------------

    def steps_for(self, nfe: int) -> int:
        """Denoising steps at ``nfe`` network calls: one call is the decoder's."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or not 2 <= nfe <= self.T + 1:
            raise MethodError(f"ldm: nfe must be an integer in 2..T+1={self.T + 1} "
                              f"(nfe - 1 U-Net steps and one decoder call), got {nfe!r}")
        return nfe - 1

    @torch.no_grad()
    def sample_latents(self, n: int, sampler: str, steps: int, generator: torch.Generator,
                       classes: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` scaled latents ``z_0`` after ``steps`` reverse steps of ``sampler`` (one U-Net
        call each; two with guidance), given ``classes`` when the model is class-conditional."""
        params = self.sampler(sampler).params
        d = self.diffusion
        taus = d.timesteps(steps).tolist()
        net = d.denoiser()
        if self.class_conditional:
            if classes is None or classes.shape != (n,):
                raise MethodError(f"ldm: a class-conditional model samples given classes of shape ({n},), "
                                  f"got {None if classes is None else tuple(classes.shape)}")
            net = GuidedDenoiser(net, classes.to(self.device), self.null_class, float(params["guidance"]))
        z = d._randn((n, *self.latent_shape), generator)  # z_T ~ N(0, I)
        for t, s in zip(reversed(taus), reversed([0] + taus[:-1])):
            z = d.reverse_step(net, z, t, s, params, generator)
        return z

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator,
               classes: torch.Tensor | None = None) -> torch.Tensor:
        z = self.sample_latents(n, sampler, self.steps_for(nfe), generator, classes)
        x = self.decode(z / self.scale)
        return x.clamp(*self.data.value_range) if self.data.value_range is not None else x


@hookimpl
def gmbench_register_methods(register):
    register(LDM)


@hookimpl
def gmbench_register_claims(register):
    """LDM Sec. 4.1 (Fig. 6, 7): latent diffusion with a mild compression (f = 4..16) reaches a
    given FID with far less training compute than pixel-space diffusion (LDM-1), e.g. on
    ImageNet LDM-{4..16} after 2M steps beat LDM-1 by a wide FID margin. Registered in its
    budget-matched form: at the same FLOP budget on digits, ``ldm`` has a lower FID than pixel
    ``ddpm`` (DDIM, eta = 0, at the same NFE, where ``ldm``'s NFE includes its decoder call)."""
    from gmbench.claims import Cell, PaperClaim

    for nfe in (10, 50):
        register(PaperClaim(
            name=f"ldm-beats-pixel-ddpm-digits-fid-{nfe}", relation="better", metric="fid", dataset="digits",
            a=Cell("ldm", "ddim", nfe), b=Cell("ddpm", "ddim", nfe), paper="2112.10752", table="LDM Sec. 4.1, Fig. 6",
            statement=(f"at the same training FLOP budget, latent diffusion (f=2) has lower FID than pixel-space DDPM "
                       f"with DDIM at {nfe} NFE (the budget-matched form of 'LDMs reach a given FID with less "
                       f"training compute than pixel diffusion')"),
        ))
