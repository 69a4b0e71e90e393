"""Sinusoidal embeddings of a continuous scalar (diffusion time, noise level, step index).

The encoding is the fixed positional encoding of the Transformer (Vaswani et al. 2017,
arXiv:1706.03762, section 3.5) applied to a scalar, as DDPM does for its timestep
(Ho et al. 2020, arXiv:2006.11239, appendix B): frequencies form a geometric series
from 1 down to ``1 / max_period``, and the vector is ``[cos(s*t*f_k)..., sin(s*t*f_k)...]``.

Convention used by every backbone: ``t`` is a float in ``[0, 1]`` (continuous time) and
is multiplied by ``scale=1000`` before encoding, so the fastest frequency still resolves
steps of 1/1000. A method whose time is an integer step index ``0..T-1`` either passes
``t = step / T`` or builds the backbone with ``time_scale=1.0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def as_time_batch(t: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
    """Turn ``t`` (a Python number, 0-d tensor, or tensor of shape ``(n,)`` or ``(n, 1)``)
    into a float32 tensor of shape ``(n,)`` on ``device``."""
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if t.ndim == 0:
        return t.expand(n)
    t = t.reshape(-1)
    if t.shape[0] != n:
        raise ValueError(f"t has {t.shape[0]} entries but the batch has {n}; pass t of shape (N,) or a scalar")
    return t


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1.0
) -> torch.Tensor:
    """Encode scalars ``t`` of shape ``(N,)`` as ``(N, dim)`` float32 vectors.

    Args:
        t: values to encode, shape ``(N,)``; any real values.
        dim: output width. Odd widths get one trailing zero.
        max_period: longest period (in units of ``scale * t``), as in 1706.03762.
        scale: multiplier applied to ``t`` first (1000 for ``t`` in [0, 1]).
    """
    if dim < 2:
        raise ValueError(f"embedding dim must be >= 2, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (t.float() * scale)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalEmbedding(nn.Module):
    """Module form of :func:`sinusoidal_embedding` (no parameters).

    Args:
        dim: output width.
        scale: multiplier applied to ``t`` before encoding (default 1000, for t in [0, 1]).
        max_period: longest period of the encoding.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.scale, self.max_period = dim, scale, max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(t, self.dim, self.max_period, self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}, max_period={self.max_period}"


class TimeEmbedding(nn.Module):
    """Sinusoidal encoding followed by a two-layer SiLU MLP, as in DDPM (2006.11239).

    Args:
        out_dim: width of the returned conditioning vector.
        freq_dim: width of the sinusoidal encoding fed to the MLP.
        scale: multiplier applied to ``t`` before encoding (see module docstring).
    """

    def __init__(self, out_dim: int, freq_dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.sinusoid = SinusoidalEmbedding(freq_dim, scale=scale)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(t).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)
