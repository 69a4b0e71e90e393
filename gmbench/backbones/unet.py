"""A small time-conditioned U-Net for images.

Follows the U-Net of Ronneberger et al. 2015 (arXiv:1505.04597) in the variant DDPM
uses (Ho et al. 2020, arXiv:2006.11239, appendix B; itself after PixelCNN++ / Wide
ResNet): residual blocks with GroupNorm and SiLU, a sinusoidal time embedding projected
and added inside every residual block, stride-2 convolution down, nearest-neighbour
upsampling + convolution up, skip connections concatenated on the way up (one more block
per level on the way up than down), and optional single-layer self-attention
(1706.03762) at the lowest resolution and in the middle.

Resolutions are never padded: the number of downsamplings is the largest ``k`` such that
``size / 2**k`` stays an integer and at least 4, capped by the preset's number of levels.
So 8x8 -> 4x4 (one downsample), 28x28 -> 14 -> 7 (two), 32x32 -> 16 -> 8 -> 4 (three).

Departure from DDPM's output layer (``conv(SiLU(GroupNorm(h)))``): the final convolution
reads ``[SiLU(GroupNorm(h)), h]``, the normalised *and* the raw last feature map. GroupNorm
removes the scale of ``h``, so a head that only sees it has an output bounded by its
weights whatever the input; the raw feature map carries ``conv_in(x)`` through the skip
connections and the ResBlocks' linear shortcuts, so the head can follow targets that grow
with the input (a noise prediction is about the input itself at ``t = T``). Measured on
the tiny 8x8 U-Net fitted to output its input for images of per-pixel scale up to 3
(``tests/test_backbones.py``): relative error at twice that scale 0.44-0.50 with the old
head, 0.08-0.11 with this one. The same change was made to the toy2d MLP, where the bounded head
broke DDIM sampling (``docs/parity.md``).

Class conditioning (``num_classes``): a learned embedding of the label is added to the time
embedding before the SiLU, so every ResBlock sees it (the class embedding of Dhariwal & Nichol
2021, arXiv:2105.05233, also one of the conditioning routes of latent diffusion,
arXiv:2112.10752). It has ``num_classes + 1`` rows: the last is the "no class" label that
classifier-free guidance (Ho & Salimans, arXiv:2207.12598) trains with and samples against.
Without ``num_classes`` the network and its state dict are exactly the unconditional ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embeddings import TimeEmbedding, as_time_batch
from .flops import register_cpu_attention_flops
from .sizes import size_config

register_cpu_attention_flops()


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32 (DDPM's choice) but at least 4 channels per group."""
    g = min(32, max(1, channels // 4))
    while channels % g:
        g -= 1
    return g


def num_downsamples(image_size: int, min_size: int = 4) -> int:
    """How many times ``image_size`` can be halved exactly while staying >= ``min_size``."""
    k = 0
    while image_size % 2 == 0 and image_size // 2 >= min_size:
        image_size //= 2
        k += 1
    return k


class ResBlock(nn.Module):
    """GN-SiLU-Conv, add projected time embedding, GN-SiLU-Dropout-Conv, plus shortcut.

    Args:
        in_ch: input channels.
        out_ch: output channels (a 1x1 conv shortcut is used when they differ).
        temb_dim: width of the time embedding, or None for an unconditioned block.
        dropout: dropout probability before the second convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch) if temb_dim is not None else None
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual.

    Args:
        channels: feature channels (must be divisible by ``heads``).
        heads: number of attention heads.
    """

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, hh * ww).unbind(1)
        # (N, heads, head_dim, HW) -> (N, heads, HW, head_dim)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(n, c, hh, ww)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (halves H and W exactly when they are even)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Time-conditioned U-Net (1505.04597, DDPM variant 2006.11239).

    Args:
        in_channels: channels of the input image (1 for digits/MNIST, 3 for CIFAR).
        out_channels: channels of the output (e.g. ``in_channels`` for an epsilon / velocity
            prediction, ``2 * in_channels`` for mean and variance).
        image_size: height = width of the inputs, or ``(height, width)``; fixes how many
            times the network downsamples (see module docstring). Inputs of any other
            size are rejected.
        size: preset name (``tiny``/``small``/``base``/``large``); see
            :func:`gmbench.backbones.sizes.size_config` (``kind="unet"``).
        cond: if True, ``forward(x, t)`` with ``t`` of shape ``(N,)`` (or a scalar), the
            time embedding added in every ResBlock; if False, ``forward(x)``.
        time_scale: multiplier applied to ``t`` before the sinusoidal encoding; the default
            1000 suits ``t`` in [0, 1], use 1.0 for integer step indices.
        num_classes: if set (needs ``cond``), ``forward(x, t, y)`` with integer labels ``y`` of
            shape ``(N,)`` in ``0..num_classes``, where ``num_classes`` itself means "no class".

    Attributes:
        levels: number of resolutions actually used (downsamplings + 1).
        out: the final ``nn.Conv2d`` (``2 * channels`` inputs: the normalised and the raw
            last feature map); DDPM zero-initialises it, which a method may do.
    """

    def __init__(
        self, in_channels: int, out_channels: int, image_size: int | tuple[int, int],
        size: str = "small", cond: bool = True, time_scale: float = 1000.0, num_classes: int | None = None,
    ) -> None:
        super().__init__()
        cfg = size_config("unet", size)
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(hw) != 2 or min(hw) < 1:
            raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, hw
        self.size, self.cond = size, cond
        ch, nrb, dropout = cfg["channels"], cfg["num_res_blocks"], cfg["dropout"]
        mult = tuple(cfg["channel_mult"])
        self.levels = levels = min(len(mult), min(num_downsamples(s) for s in hw) + 1)
        mult = mult[:levels]
        use_attn, heads = cfg["attention"], cfg["heads"]

        temb_dim = 4 * ch if cond else None
        self.time_embed = TimeEmbedding(temb_dim, ch, scale=time_scale) if cond else None
        if num_classes is not None and (not cond or isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer on a time-conditioned UNet, got {num_classes!r}")
        self.num_classes = num_classes
        # the last row is the null label of classifier-free guidance
        self.class_embed = nn.Embedding(num_classes + 1, temb_dim) if num_classes else None

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs = [ch]
        cur = ch
        for lvl, m in enumerate(mult):
            lowest = lvl == levels - 1
            for _ in range(nrb):
                self.down.append(ResBlock(cur, ch * m, temb_dim, dropout))
                cur = ch * m
                if use_attn and lowest:
                    self.down.append(AttnBlock(cur, heads))
                skip_chs.append(cur)
                self.down[-1].is_skip = True
            if not lowest:
                self.down.append(Downsample(cur))
                self.down[-1].is_skip = True
                skip_chs.append(cur)

        self.mid = nn.ModuleList([ResBlock(cur, cur, temb_dim, dropout)])
        if use_attn:
            self.mid.append(AttnBlock(cur, heads))
        self.mid.append(ResBlock(cur, cur, temb_dim, dropout))

        self.up = nn.ModuleList()
        for lvl in reversed(range(levels)):
            m = mult[lvl]
            for _ in range(nrb + 1):
                self.up.append(ResBlock(cur + skip_chs.pop(), ch * m, temb_dim, dropout))
                self.up[-1].takes_skip = True
                cur = ch * m
                if use_attn and lvl == levels - 1:
                    self.up.append(AttnBlock(cur, heads))
            if lvl != 0:
                self.up.append(Upsample(cur))
        assert not skip_chs

        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.out = nn.Conv2d(2 * cur, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``x`` of shape ``(N, in_channels, H, W)`` (and ``t`` of shape ``(N,)`` when
        ``cond``, labels ``y`` of shape ``(N,)`` when ``num_classes``) to ``(N, out_channels, H, W)``."""
        if tuple(x.shape[-2:]) != self.image_size or x.ndim != 4:
            raise ValueError(
                f"UNet built for images of shape (N, {self.in_channels}, {self.image_size[0]}, "
                f"{self.image_size[1]}), got {tuple(x.shape)}"
            )
        temb = None
        if self.cond:
            if t is None:
                raise TypeError("this UNet was built with cond=True; call it as forward(x, t)")
            emb = self.time_embed(as_time_batch(t, x.shape[0], x.device))
            if self.class_embed is not None:
                if y is None or y.shape != (x.shape[0],):
                    raise TypeError(f"this UNet is class-conditional: call it as forward(x, t, y) with y of shape "
                                    f"({x.shape[0]},), got {None if y is None else tuple(y.shape)}")
                emb = emb + self.class_embed(y.to(x.device))
            elif y is not None:
                raise TypeError("this UNet was built without num_classes; call it without labels")
            temb = F.silu(emb)
        elif t is not None:
            raise TypeError("this UNet was built with cond=False; call it as forward(x)")

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, temb)
            if getattr(block, "is_skip", False):
                skips.append(h)
        for block in self.mid:
            h = block(h, temb)
        for block in self.up:
            if getattr(block, "takes_skip", False):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, temb)
        return self.out(torch.cat([F.silu(self.norm_out(h)), h], dim=1))
