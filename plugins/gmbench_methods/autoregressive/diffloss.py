"""The per-token diffusion loss of MAR (Li et al. 2024, arXiv 2406.11838, section 3).

A token ``x`` (a vector of ``d`` reals) is modelled by ``p(x | z)``, where ``z`` is the
transformer's output at the token's position. ``p(x | z)`` is a small DDPM (arXiv 2006.11239):

* forward process ``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps``, ``eps ~ N(0, I_d)``, with
  iDDPM's cosine ``abar`` (arXiv 2102.09672, Eq. 17) over ``T = 1000`` steps (the paper's
  training schedule; ``gmbench_methods.diffusion.schedules.NoiseSchedule.cosine``);
* loss (Eq. 1-2): ``L(z, x) = E_{eps, t} || eps - eps_theta(x_t | t, z) ||^2``, ``t ~ U{1..T}``;
  the paper draws ``t`` and ``eps`` several times per token ("diffusion batch multiplier", 4
  in the released code) and averages, which lowers the gradient's variance at the cost of
  the head only;
* sampling (Eq. 3): DDPM's ancestral step ``x_{t-1} = 1/sqrt(alpha_t) (x_t - (1 - alpha_t) /
  sqrt(1 - abar_t) eps_theta(x_t | t, z)) + sigma_t delta``, ``delta ~ N(0, I)``, on an evenly
  spaced sub-sequence of the T steps (iDDPM's respacing), with temperature ``tau`` scaling
  the noise term, ``sigma_t delta -> tau sigma_t delta`` (section 3.3). Here ``sigma_t^2 =
  beta~'_t``, the posterior variance of the respaced chain: the released code *learns* the
  variance between ``beta~`` and ``beta`` (iDDPM's hybrid loss); the paper states the plain
  epsilon loss above, which is what is trained here, so the variance is fixed at its lower
  end (``beta`` itself collapses at few steps, DDIM T1). The step is written through the
  predicted ``x_0`` (identical to the formula above without clipping); for pixel tokens
  ``x_0`` can be clipped to the data range as DDPM's released sampler does.

The denoiser ``eps_theta`` is the paper's ``SimpleMLPAdaLN``, scaled down: the input
``x_t`` is projected to ``width``, the condition ``c = emb(t) + W z`` (sinusoidal time
embedding through a 2-layer MLP, plus a linear map of ``z``), then ``depth`` residual blocks
``h + g * MLP((1 + s) * LN(h) + b)`` with ``(b, s, g) = Linear(SiLU(c))`` (adaLN), and a final
``Linear((1 + s) * LN(h) + b)``. As in the released code the adaLN maps and the output layer
start at zero (adaLN-Zero, arXiv 2212.09748), so ``eps_theta = 0`` at initialisation. Paper:
3 blocks of width 1024 beside a 768-wide transformer (MAR-B); here 3 blocks of the
transformer's width.
"""

from __future__ import annotations

import torch
from torch import nn

from gmbench.backbones.embeddings import TimeEmbedding
from gmbench_methods.diffusion.schedules import NoiseSchedule, space_timesteps


class AdaLNBlock(nn.Module):
    """``h + g * MLP((1 + s) * LN(h) + b)`` with ``(b, s, g)`` regressed from the condition."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """``eps_theta(x_t | t, z)``: the paper's AdaLN-conditioned residual MLP (module docstring).

    Args:
        token_dim: ``d``, the size of one token.
        cond_dim: size of the transformer's output ``z``.
        width, depth: hidden width and number of residual blocks (paper: 1024, 3).
        T: number of diffusion steps; ``forward`` takes integer ``t`` in ``1..T``.
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int = 3, T: int = 1000) -> None:
        super().__init__()
        self.T = T
        self.inp = nn.Linear(token_dim, width)
        self.time = TimeEmbedding(width, width, scale=1.0)  # integer t, as the released code
        self.cond = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.time(t.float()) + self.cond(z)
        h = self.inp(xt)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.out(self.norm_out(h) * (1 + scale) + shift)


def diffusion_loss(head: DiffusionHead, schedule: NoiseSchedule, x: torch.Tensor, z: torch.Tensor,
                   mul: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 2 averaged over ``mul`` draws of ``(t, eps)`` per token: ``x`` (M, d), ``z`` (M, c)."""
    x, z = x.repeat(mul, 1), z.repeat(mul, 1)
    t = torch.randint(1, schedule.T + 1, (x.shape[0],), device=x.device, generator=generator)
    eps = torch.randn(x.shape, device=x.device, generator=generator)
    xt = schedule.q_sample(x, t, eps)
    return (eps - head(xt, t, z)).pow(2).mean()


@torch.no_grad()
def sample_tokens(head: nn.Module, schedule: NoiseSchedule, z: torch.Tensor, token_dim: int, steps: int,
                  temperature: float, generator: torch.Generator, clip: tuple[float, float] | None = None) -> torch.Tensor:
    """Draw one token per row of ``z`` (M, c) by ``steps`` ancestral steps: ``steps`` head calls."""
    taus = space_timesteps(schedule.T, steps).tolist()

    def randn(shape):
        return torch.randn(shape, generator=generator, device=generator.device).to(z.device, z.dtype)

    x = randn((z.shape[0], token_dim))  # x_T ~ N(0, I)
    for t, s in zip(reversed(taus), reversed([0] + taus[:-1])):
        tt = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
        eps = head(x, tt, z)
        x0 = schedule.predict_x0(x, t, eps)
        if clip is not None:
            x0 = x0.clamp(*clip)
        mean, var = schedule.q_posterior(x0, x, t, s)  # var = beta~' (0 at s = 0)
        x = mean if s == 0 else mean + temperature * var.sqrt() * randn(x.shape)
    return x
