"""NCSN: Generative Modeling by Estimating Gradients of the Data Distribution (Song & Ermon
2019, arXiv 1907.05600): a noise-conditional score network trained by denoising score
matching, sampled by annealed Langevin dynamics.

Noise levels (§4.1): a geometric sequence ``sigma_1 > sigma_2 > ... > sigma_L``
(``sigma_i = sigma_1 (sigma_L / sigma_1)^((i-1)/(L-1))``), ``L = 10``. The paper uses
``sigma_1 = 1``, ``sigma_L = 0.01`` for images in [0, 1]; defaults here:

* images: the same levels relative to the data's range, ``sigma_1 = hi - lo`` and
  ``sigma_L = 0.01 (hi - lo)`` (2 and 0.02 for data in [-1, 1]), so every noise level has the
  paper's ratio to the data's scale;
* toy2d (no paper setting): ``sigma_1 = 10``, the largest pairwise distance of the embedded toys
  (7-11.2), NCSNv2's technique 1 (arXiv 2006.09011: ``sigma_1`` about the largest distance
  between training points, so that Langevin at ``sigma_1`` moves between modes), and
  ``sigma_L = 0.01``, far below the toys' finest scale (std 0.15-0.5), as the paper's 0.01 is
  below its images' visible detail.

Network (§4.2 uses a RefineNet with conditional instance normalisation on the level index):
the shared backbone (MLP on toy2d, U-Net on images, same size preset as ``ddpm``) takes the
noise level through its time input as ``(log sigma - log sigma_L) / (log sigma_1 - log sigma_L)``,
in [0, 1] (``sigma_L -> 0``, ``sigma_1 -> 1``). ``score_scaling="none"`` (the paper): the
network's output is the score ``s_theta(x, sigma)``; ``"sigma"`` (default):
``s_theta(x, sigma) = out(x, sigma) / sigma``, the parameterisation of NCSNv2 (technique 3)
and Score SDE, which only has to output values of order one while the score grows to
``1 / sigma_L``. Deviation, measured on 8gaussians after ``smoke`` (seeds 0 / 1 / 2, annealed
Langevin at NFE 1000, 1000 samples): ``"none"`` gave sliced W2 0.75 / 0.50 / diverged (a sample
reached 4e15: where the learned score is far off, the step ``alpha_i s_theta / 2`` overshoots)
with 75% / 78% / 60% of samples within 1.5 of a mixture centre; ``"sigma"`` 0.45 / 0.53 / 0.60
with 88% / 90% / 84%. The output layer starts at zero (score 0), as
``ddpm``.

Objective (Eqs. 5-6): for ``i ~ U{1..L}``, ``x~ = x + sigma_i z``, ``z ~ N(0, I)``,
``l(theta; sigma) = 1/2 E || s_theta(x~, sigma) + (x~ - x) / sigma^2 ||^2`` and
``L = 1/L sum_i lambda(sigma_i) l(theta; sigma_i)`` with ``lambda(sigma) = sigma^2``, i.e. the
regression target is ``grad log q_sigma(x~ | x) = -(x~ - x) / sigma^2`` and each level's loss
is ``|| sigma s_theta + z ||^2 / 2``. The level is drawn per example (the released code's
Monte-Carlo estimate of the sum over ``i``); squared errors are averaged over dimensions
instead of summed (a constant factor, as in ``ddpm``).

Sampler ``annealed-langevin`` (Algorithm 1): from ``x_0`` (uniform on the data range for
images, as the paper's experiments; ``N(0, sigma_1^2 I)`` on toy2d, which has no range), for
``i = 1..L`` with step ``alpha_i = eps sigma_i^2 / sigma_L^2``, ``T`` steps of
``x <- x + alpha_i / 2 s_theta(x, sigma_i) + sqrt(alpha_i) z``. The paper uses ``T = 100``,
``eps = 2e-5`` at ``sigma_L = 0.01``, i.e. ``alpha_i / sigma_i^2 = 0.2``: ``eps`` defaults to
``0.2 sigma_L^2``, the same ratio at any ``sigma_L``. NFE is adjustable: NFE ``N`` runs
``T = N // L`` steps per level (``L T`` network calls; ``N`` below ``L`` is refused), so the
paper's setting is NFE 1000 and the host's grid (10-100) gives 1-10 steps per level. The
samples are the last Langevin iterate (they carry noise of scale ``sqrt(alpha_L)`` and
``sigma_L``); images are clamped to the data range at the end.

Sampler ``annealed-langevin-denoise``: the same chain whose last network call, at
``sigma_L``, is a denoising step ``x <- x + sigma_L^2 s_theta(x, sigma_L)`` (Tweedie's formula
for ``E[x | x~]``) instead of a Langevin step. NCSNv2's released code (``sampling.denoise``;
Jolicoeur-Martineau et al., arXiv 2009.05475) makes this denoising an extra call after all
``L T`` Langevin steps; here it takes the last step's place so that both samplers run exactly
the NFE asked for. Not part of NCSN's Algorithm 1.

Likelihood: none (a score model defines no normalised density without an ODE, which NCSN
does not use).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.data.base import DataSpec
from gmbench.ema import ema_update
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage

from ..flow_matching import ode

DEFAULT_LR = {"toy2d": 3e-3, "image": 1e-3}
TOY_SIGMAS = (10.0, 0.01)
SCORE_SCALINGS = ("none", "sigma")
#: alpha_i / sigma_i^2 = eps / sigma_L^2 of the paper (eps = 2e-5 at sigma_L = 0.01)
PAPER_STEP_RATIO = 0.2


class NCSN(Method):
    """Noise-conditional score network, weighted DSM over geometric noise levels, annealed Langevin.

    Args:
        data: the dataset's spec (toy2d or image).
        model_size: backbone preset (MLP for toy2d, U-Net for images).
        sigma_1, sigma_L: largest and smallest noise level; None picks the defaults of the
            module doc (images: ``hi - lo`` and ``0.01 (hi - lo)``; toy2d: 10 and 0.01).
        L: number of noise levels (paper: 10).
        eps: Langevin step constant; None: ``0.2 sigma_L^2`` (the paper's 2e-5 at 0.01).
        score_scaling: ``"sigma"`` (default: its output divided by sigma, NCSNv2) or
            ``"none"`` (the network outputs the score, the paper; see the module doc).
        lr: Adam learning rate; None picks ``DEFAULT_LR`` for the modality (paper: 1e-3).
        grad_clip: gradient-norm clipping (gmbench's diffusion plugins clip at 1; the paper
            states none).
        ema_decay: EMA of the weights used for sampling (NCSNv2's technique 5; NCSN has none,
            so the default is off).
    """

    name = "ncsn"
    family = "diffusion"
    paper = "1907.05600"
    title = "Generative Modeling by Estimating Gradients of the Data Distribution"
    modalities = ("toy2d", "image")
    samplers = (
        SamplerInfo("annealed-langevin", adjustable_nfe=True, deterministic=False, default_nfe=1000),
        SamplerInfo("annealed-langevin-denoise", adjustable_nfe=True, deterministic=False, default_nfe=1000,
                    params={"denoise": "tweedie"}),
    )
    likelihood = "none"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        sigma_1: float | None = None,
        sigma_L: float | None = None,
        L: int = 10,
        eps: float | None = None,
        score_scaling: str = "sigma",
        lr: float | None = None,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(data, model_size)
        if score_scaling not in SCORE_SCALINGS:
            raise ValueError(f"ncsn: score_scaling must be one of {SCORE_SCALINGS}, got {score_scaling!r}")
        if isinstance(L, bool) or not isinstance(L, int) or L < 2:
            raise ValueError(f"ncsn: L must be an integer >= 2, got {L!r}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ncsn: ema_decay must be in [0, 1) or None, got {ema_decay!r}")
        width = None
        if data.modality == "image" and data.value_range is not None:
            width = float(data.value_range[1] - data.value_range[0])
        sigma_1 = (width if width else TOY_SIGMAS[0]) if sigma_1 is None else float(sigma_1)
        sigma_L = (0.01 * width if width else TOY_SIGMAS[1]) if sigma_L is None else float(sigma_L)
        if not 0 < sigma_L < sigma_1:
            raise ValueError(f"ncsn: need 0 < sigma_L < sigma_1, got sigma_1={sigma_1}, sigma_L={sigma_L}")
        self.L, self.sigma_1, self.sigma_L = L, sigma_1, sigma_L
        self.eps = PAPER_STEP_RATIO * sigma_L**2 if eps is None else float(eps)
        if not self.eps > 0:
            raise ValueError(f"ncsn: eps must be positive, got {eps!r}")
        self.score_scaling = score_scaling
        self.lr = DEFAULT_LR[data.modality] if lr is None else float(lr)
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay or 0.0
        self.init_range = data.value_range if data.modality == "image" else None
        self.clip_range = data.value_range if data.modality == "image" else None

        self.net: nn.Module = ode.build_velocity_net(data, model_size)  # the score network, starting at 0
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if self.ema_decay else None

    # -- noise levels and the score network ----------------------------------------------------

    @property
    def sigmas(self) -> torch.Tensor:
        """``sigma_1 > ... > sigma_L`` (float64), geometric."""
        k = torch.arange(self.L, dtype=torch.float64) / (self.L - 1)
        return self.sigma_1 * (self.sigma_L / self.sigma_1) ** k

    def level_input(self, sigma: torch.Tensor) -> torch.Tensor:
        """The backbone's time input for noise level ``sigma``: log sigma mapped affinely onto [0, 1]."""
        lo, hi = math.log(self.sigma_L), math.log(self.sigma_1)
        return ((torch.log(sigma) - lo) / (hi - lo)).float()

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, **({"ema": self.ema} if self.ema is not None else {})}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def backbone(self) -> str:
        from gmbench.method import backbone_label

        return backbone_label(type(self.net).__name__, self.model_size, self.num_parameters())

    def denoiser(self) -> nn.Module:
        """The network used for sampling (the EMA weights when enabled)."""
        return self.ema if self.ema is not None else self.net

    def score(self, net: nn.Module, x: torch.Tensor, sigma) -> torch.Tensor:
        """``s_theta(x, sigma)``; ``sigma`` a float or one level per example."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        out = net(x, self.level_input(sigma))
        if self.score_scaling == "sigma":
            s = sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma
            out = out / s.to(x.dtype)
        return out

    # -- training: Eqs. 5-6 --------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        return [Stage("score", (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),))]

    @staticmethod
    def perturb(x: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x~ = x + sigma z`` and the DSM target ``grad log q_sigma(x~ | x) = -(x~ - x) / sigma^2``."""
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        x_tilde = x + s * z
        return x_tilde, -(x_tilde - x) / s**2

    def dsm_loss(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``lambda(sigma) * 2 l(theta; sigma)`` per example (Eq. 5 weighted by ``sigma^2``), mean over dimensions."""
        sigma = self.sigmas.to(x.device)[levels]
        x_tilde, target = self.perturb(x, sigma, z)
        lam = (sigma**2).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (lam * (self.score(net, x_tilde, sigma) - target).pow(2)).flatten(1).mean(1)

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        levels = torch.randint(0, self.L, (batch.shape[0],), device=batch.device)
        z = torch.randn_like(batch)
        return {"adam": self.dsm_loss(self.net, batch, levels, z).mean()}

    @torch.no_grad()
    def on_step_end(self, stage: str, step: int) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.net, self.ema_decay, step)

    # -- sampling: annealed Langevin dynamics (Algorithm 1) -------------------------------------

    def steps_per_level(self, nfe: int) -> int:
        """``T = nfe // L``: Langevin steps per noise level for a budget of ``nfe`` network calls."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < self.L:
            raise MethodError(f"ncsn: nfe must be an integer >= L={self.L} (T = nfe // L steps per level), got {nfe!r}")
        return nfe // self.L

    def initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        shape = (n, *self.data.shape)
        if self.init_range is not None:  # uniform noise on the data's range (the paper's images)
            lo, hi = self.init_range
            u = torch.rand(shape, generator=generator, device=generator.device).to(self.device)
            return lo + (hi - lo) * u
        return self.sigma_1 * ode.randn(shape, generator, self.device)

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        denoise = bool(self.sampler(sampler).params.get("denoise"))  # unknown names fail with a suggestion
        T = self.steps_per_level(nfe)
        net = self.denoiser()
        x = self.initial(n, generator)
        sigmas = self.sigmas.tolist()
        for i, sigma in enumerate(sigmas):
            alpha = self.eps * sigma**2 / self.sigma_L**2
            for t in range(T):
                if denoise and i == self.L - 1 and t == T - 1:
                    x = x + sigma**2 * self.score(net, x, sigma)  # Tweedie: E[x | x~] at sigma_L
                    break
                z = ode.randn(x.shape, generator, self.device)
                x = x + 0.5 * alpha * self.score(net, x, sigma) + math.sqrt(alpha) * z
        if self.clip_range is not None:
            x = x.clamp(*self.clip_range)
        return x


@hookimpl
def gmbench_register_methods(register):
    register(NCSN)
