"""The KL-regularised autoencoder of LDM's first stage (Rombach et al. 2022, arXiv 2112.10752,
Sec. 3.1 and appendix G), at CPU scale, for :mod:`gmbench_methods.diffusion.ldm`.

Encoder ``E`` maps an image ``x (C, H, W)`` to the parameters of a diagonal Gaussian
posterior ``q_E(z|x) = N(mu(x), diag(sigma^2(x)))`` over latents ``z (c, H/f, W/f)``; the
decoder ``D`` maps a latent back to an image. Stage-1 loss per image (the released
``LPIPSWithDiscriminator`` without its LPIPS and GAN terms, and with its learned scalar
log-variance fixed at 0)::

    L_AE = sum_pixels |x - D(z)|  +  kl_weight * KL(q_E(z|x) || N(0, I)),   z ~ q_E(z|x)

(``rec_loss="l2"`` uses the squared error), with the closed form of the KL between a
diagonal Gaussian and the standard normal, summed over the latent's elements::

    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)

``kl_weight`` is 1e-6 in the paper's f = 4 / 8 KL autoencoders: a *slight* KL penalty that
keeps the latent's scale in check without forcing it to be a standard normal. The loss the
method returns is ``L_AE`` divided by the number of pixels (the mean over pixels of the
reconstruction term plus ``kl_weight / D`` times the KL): the same minimiser, the scale of a
per-pixel loss. The log-variance is clamped to [-30, 20] as in the released
``DiagonalGaussianDistribution``.

Network (the paper's VQGAN-style convolutional autoencoder, smaller): encoder ``conv3x3 ->
[ResBlocks, stride-2 conv] x log2(f) -> ResBlocks -> GroupNorm -> SiLU -> conv3x3 to 2c ->
1x1 conv`` (the released ``quant_conv``), decoder ``1x1 conv (post_quant_conv) -> conv3x3 ->
ResBlocks -> [nearest x2 + conv3x3, ResBlocks] x log2(f) -> GroupNorm -> SiLU -> conv3x3``.
ResBlocks, down- and up-sampling are the shared U-Net's (:mod:`gmbench.backbones.unet`,
GroupNorm-SiLU-conv with no time embedding); widths ``base * channel_mult[i]`` and
blocks per level from the U-Net preset at the budget's size; ``ldm`` passes its ``ae_channels``
as ``base`` (``"auto"``: half the preset's ``channels``, so tiny: 16, 32; 1 block). The
paper's middle self-attention blocks are left out (CPU scale; at 4x4 latents they would
mix 16 positions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gmbench.backbones.sizes import size_config
from gmbench.backbones.unet import Downsample, ResBlock, Upsample, _groups

LOGVAR_RANGE = (-30.0, 20.0)


class DiagonalGaussian:
    """``N(mean, diag(exp(logvar)))`` over latents (the encoder's posterior)."""

    def __init__(self, params: torch.Tensor) -> None:
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = mean + std * eps`` (reparameterised); ``eps`` from ``generator`` if given."""
        if generator is None:
            eps = torch.randn_like(self.mean)
        else:
            eps = torch.randn(self.mean.shape, generator=generator, device=generator.device).to(self.mean)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """``KL(q || N(0, I))`` per example, summed over the latent's elements."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


def level_widths(model_size: str, f: int, base: int | None = None) -> tuple[list[int], int]:
    """Widths of the ``log2(f) + 1`` levels and ResBlocks per level from the U-Net preset
    (the multipliers are repeated past the preset's last one when ``f`` asks for more);
    ``base`` replaces the preset's base width."""
    cfg = size_config("unet", model_size)
    mult = list(cfg["channel_mult"])
    levels = int(math.log2(f)) + 1
    mult = (mult + [mult[-1]] * levels)[:levels]
    base = cfg["channels"] if base is None else base
    return [base * m for m in mult], cfg["num_res_blocks"]


class KLEncoder(nn.Module):
    """Image ``(N, C, H, W)`` -> posterior parameters ``(N, 2c, H/f, W/f)`` (mean, log-variance)."""

    def __init__(self, in_channels: int, latent_channels: int, widths: list[int], depth: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        cur = widths[0]
        for i, w in enumerate(widths):
            for _ in range(depth):
                blocks.append(ResBlock(cur, w, None))
                cur = w
            if i < len(widths) - 1:
                blocks.append(Downsample(cur))
        blocks.append(ResBlock(cur, cur, None))  # the middle block
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, 2 * latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, None)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class KLDecoder(nn.Module):
    """Latent ``(N, c, H/f, W/f)`` -> image ``(N, C, H, W)`` (unclamped)."""

    def __init__(self, out_channels: int, latent_channels: int, widths: list[int], depth: int) -> None:
        super().__init__()
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        cur = widths[-1]
        self.conv_in = nn.Conv2d(latent_channels, cur, 3, padding=1)
        blocks: list[nn.Module] = [ResBlock(cur, cur, None)]  # the middle block
        for i in reversed(range(len(widths))):
            for _ in range(depth):
                blocks.append(ResBlock(cur, widths[i], None))
                cur = widths[i]
            if i > 0:
                blocks.append(Upsample(cur))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))
        for block in self.blocks:
            h = block(h, None)
        return self.conv_out(F.silu(self.norm_out(h)))
