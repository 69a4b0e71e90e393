"""Glow: Kingma & Dhariwal, *Glow: Generative Flow with Invertible 1x1 Convolutions*,
arXiv 1807.03039.

Exact log-likelihood by the change of variables, as every flow here
(:mod:`gmbench_methods.flows.base`). One *step of flow* (Sec. 3, Fig. 2a, Table 1) is

1. **actnorm** ``y = (x + b) exp(logs)`` per channel, ``log|det| = H W sum logs``, with
   data-dependent initialisation: before the first step (``on_stage_start``, which the host
   meters against the stage) one batch of ``init_examples`` training examples is passed
   through the flow and every actnorm sets ``b, logs`` so that its output on that batch has
   zero mean and unit variance per channel (Sec. 3.1);
2. **invertible 1x1 convolution** in LU form (Sec. 3.2, Eq. 10),
   ``W = P L (U + diag(s))``, ``log|det| = H W sum log|s|``, ``P`` fixed, initialised from a
   random rotation;
3. **affine coupling** on a channel split (Sec. 3.3): ``(t, raw) = NN(x_a)``,
   ``y_b = (x_b + t) * scale``; ``scale = sigmoid(raw + 2)`` by default, as in the released
   code (``coupling_scale="exp"`` for the paper's ``exp``); ``coupling="additive"`` drops the
   scale (the Fig. 3 ablation).

**Multi-scale** (Fig. 2b): ``levels`` levels, each a squeeze then ``steps`` steps of flow,
then (except at the last level) a split: half of the channels is factored out with a
learned conditional prior ``N(mu(z_1), exp(logs(z_1))^2)`` read by a zero-initialised
convolution from the kept half (the released code's ``split2d``); the top prior is
``N(0, I)``. On 8x8 digits ``levels = 2``: ``1x8x8`` -> squeeze -> ``4x4x4``, ``steps`` steps,
split off ``2x4x4`` -> squeeze -> ``8x2x2``, ``steps`` steps. ``steps`` defaults to 4 per level
(the paper: 32 with 3 levels on CIFAR-10; CPU scale here). Pixels are dequantised uniformly
within their bins and mapped to ``[-1/2, 1/2]`` (the released code's pre-processing; no
logit), whose log-determinant is part of ``log p``, so the host's bits/dim are of the
discrete data. Coupling networks: Glow's ``NN()`` (3x3 conv, actnorm, ReLU, 1x1 conv,
actnorm, ReLU, zero-initialised 3x3 conv) at ``2 x`` the U-Net preset's base channels
(:class:`.layers.ConvNet`; the paper's has 512): the same conditioner as ``realnvp``, and not
the shared ``UNet``, whose time input means nothing to a flow and which, called once per
step, would leave the budget only a few dozen steps.

**toy2d**: no squeeze or split (two dimensions): ``steps`` steps (default 4) of actnorm, an
invertible 2x2 linear map in LU form, and an affine coupling of one dimension on the other
whose network is the shared :class:`gmbench.backbones.MLP` (``cond=False``). Why 4: at the
``small`` budget (1e12 FLOPs) 4 steps took 813 gradient steps to test NLL 3.77 nats, 8 steps
406 gradient steps to 3.85 (seed 0; true density 3.48 on those points): a step of flow costs
one backbone MLP, and at this budget more updates beat more depth.

Samplers (one inverse pass each, NFE 1): ``sample`` draws every latent, the split priors'
included, at temperature ``T = 1``; ``sample-t0.7`` at ``T = 0.7`` (Sec. 5, Fig. 8: lower
temperature trades diversity for quality). Temperature is a sampler parameter
(``SamplerInfo.params``), so one trained model is scored at both: the whitened latent
``eps = (z - mu) exp(-logs)`` is drawn from ``N(0, T^2 I)``, which is the released code's
``z = mu + exp(logs) * T * eps``.

Deviations (CPU scale): few steps and narrow networks; Adam with a short warm-up and
gradient-norm clipping at 100 (a guard; it rarely acts); no learned top prior and no
class conditioning (the paper's optional ``learntop``/``ycond``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.method import MethodError, SamplerInfo

from .base import FlowMethod
from .layers import ActNorm, CentreScale, ChannelCoupling, ConvNet, InvConv1x1, SplitPrior, conv_hidden, mlp_conditioner, squeeze, unsqueeze

COUPLINGS = ("affine", "additive")
SCALES = ("sigmoid", "exp")


class FlowStep(nn.Module):
    """actnorm -> invertible 1x1 convolution -> coupling (Glow Fig. 2a)."""

    def __init__(self, channels: int, net: nn.Module, additive: bool, scale: str) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels)
        self.coupling = ChannelCoupling(net, additive=additive, scale=scale)

    def forward(self, x):
        x, a = self.actnorm(x)
        x, b = self.invconv(x)
        x, c = self.coupling(x)
        return x, a + b + c

    def inverse(self, y):
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(y)))


class GlowFlow(nn.Module):
    """The Glow bijection ``x -> eps`` (module doc): ``forward(x) -> (eps, logdet)``,
    ``forward(eps, reverse=True) -> x``."""

    def __init__(self, shape: tuple[int, ...], size: str, steps: int, levels: int, hidden: int, additive: bool,
                 scale: str, pre: nn.Module | None) -> None:
        super().__init__()
        self.shape, self.pre = tuple(shape), pre
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        self.factored: list[tuple[int, ...]] = []
        if len(self.shape) == 1:
            (d,) = self.shape
            keep = d // 2
            self.squeeze_levels = False
            self.levels.append(nn.ModuleList(
                FlowStep(d, mlp_conditioner(keep, 2 * (d - keep), size), additive, scale) for _ in range(steps)))
            self.top_shape = self.shape
        else:
            self.squeeze_levels = True
            c, h, w = self.shape
            for level in range(levels):
                c, h, w = 4 * c, h // 2, w // 2
                keep = c // 2
                self.levels.append(nn.ModuleList(
                    FlowStep(c, ConvNet(keep, 2 * (c - keep), hidden, "actnorm"), additive, scale) for _ in range(steps)))
                if level < levels - 1:
                    self.splits.append(SplitPrior(c))
                    self.factored.append((c - keep, h, w))
                    c = keep
            self.top_shape = (c, h, w)

    def forward(self, x, reverse: bool = False):
        if reverse:
            return self._inverse(x)
        logdet = x.new_zeros(x.shape[0])
        h = x
        if self.pre is not None:
            h, ld = self.pre(h)
            logdet = logdet + ld
        out = []
        for i, steps in enumerate(self.levels):
            if self.squeeze_levels:
                h = squeeze(h)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
            if i < len(self.splits):
                h, eps, ld = self.splits[i](h)
                out.append(eps.flatten(1))
                logdet = logdet + ld
        out.append(h.flatten(1))
        return torch.cat(out, dim=1), logdet

    def _inverse(self, eps):
        n = eps.shape[0]
        sizes = [math.prod(s) for s in self.factored] + [math.prod(self.top_shape)]
        parts = eps.split(sizes, dim=1)
        h = parts[-1].reshape(n, *self.top_shape)
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = self.splits[i].inverse(h, parts[i].reshape(n, *self.factored[i]))
            for step in reversed(self.levels[i]):
                h = step.inverse(h)
            if self.squeeze_levels:
                h = unsqueeze(h)
        if self.pre is not None:
            h = self.pre.inverse(h)
        return h


class Glow(FlowMethod):
    """Glow (module doc).

    Args:
        data: the dataset spec (toy2d or image).
        model_size: preset of the coupling networks (MLP on toy2d, ConvNet width on images).
        steps: steps of flow per level; None: 4 (see module doc).
        levels: levels of the multi-scale architecture on images (each starts with a squeeze).
        hidden: hidden channels of the image coupling networks; None: twice the U-Net preset's base.
        coupling: ``"affine"`` or ``"additive"``.
        coupling_scale: ``"sigmoid"`` (``sigmoid(raw + 2)``, released code) or ``"exp"`` (paper).
        lr: Adam learning rate.
        warmup_steps: linear learning-rate warm-up.
        grad_clip: gradient-norm clipping (None: off).
        init_examples: examples of the actnorm data-dependent initialisation.
    """

    name = "glow"
    paper = "1807.03039"
    title = "Glow: Generative Flow with Invertible 1x1 Convolutions"
    samplers = (
        SamplerInfo("sample", adjustable_nfe=False, deterministic=False, default_nfe=1, params={"temperature": 1.0}),
        SamplerInfo("sample-t0.7", adjustable_nfe=False, deterministic=False, default_nfe=1, params={"temperature": 0.7}),
    )

    def __init__(
        self,
        data,
        model_size: str = "small",
        steps: int | None = None,
        levels: int | None = None,
        hidden: int | None = None,
        coupling: str = "affine",
        coupling_scale: str = "sigmoid",
        lr: float = 1e-3,
        warmup_steps: int = 20,
        grad_clip: float | None = 100.0,
        init_examples: int = 256,
    ) -> None:
        super().__init__(data, model_size, lr, warmup_steps, grad_clip, init_examples)
        if coupling not in COUPLINGS:
            raise MethodError(f"glow: coupling must be one of {COUPLINGS}, not {coupling!r}")
        if coupling_scale not in SCALES:
            raise MethodError(f"glow: coupling_scale must be one of {SCALES}, not {coupling_scale!r}")
        if steps is None:
            steps = 4
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise MethodError(f"glow: steps must be a positive integer, not {steps!r}")
        pre = None
        if data.modality == "image":
            c, h, w = data.shape
            if levels is None:
                levels = 2
            if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
                raise MethodError(f"glow: levels must be a positive integer, not {levels!r}")
            if h % 2**levels or w % 2**levels:
                raise MethodError(f"glow: {levels} levels need the image sides ({h}x{w}) divisible by {2**levels}")
            lo, hi = data.value_range
            pre = CentreScale(lo, hi, self.bin_width)
        self.steps, self.levels, self.coupling, self.coupling_scale = steps, levels, coupling, coupling_scale
        self.hidden = hidden or conv_hidden(model_size)
        self.flow = GlowFlow(data.shape, model_size, steps, levels or 1, self.hidden, coupling == "additive",
                             coupling_scale, pre)

    def backbone(self) -> str:
        """``"MLP(small, ...M, 4 nets)"`` on toy2d, ``"ConvNet(small, ...M, 8 nets)"`` on images."""
        from gmbench.method import backbone_label

        nets = [m for m in self.flow.modules() if isinstance(m, ChannelCoupling)]
        family = "MLP" if self.data.modality == "toy2d" else "ConvNet"
        return backbone_label(family, self.model_size, self.num_parameters(), nets=len(nets))


@hookimpl
def gmbench_register_methods(register):
    register(Glow)


@hookimpl
def gmbench_register_claims(register):
    """Glow T2 (arXiv 1807.03039): Glow reaches lower bits/dim than RealNVP (CIFAR-10 3.35 vs
    3.49). Checked as exact test NLL on every toy2d set and bits/dim on digits, ``glow``
    against ``realnvp`` at the same budget; and Glow Fig. 3: affine coupling beats additive."""
    from gmbench.claims import Cell, PaperClaim

    for metric, dataset in (("test_nll", "modality:toy2d"), ("test_bpd", "digits")):
        where = "toy2d" if dataset.startswith("modality:") else dataset
        register(PaperClaim(
            name=f"glow-beats-realnvp-{where}", relation="better", metric=metric, dataset=dataset,
            a=Cell("glow"), b=Cell("realnvp"), paper="1807.03039", table="Glow T2",
            statement=f"Glow has lower exact {metric} than RealNVP at the same budget",
        ))
        register(PaperClaim(
            name=f"glow-affine-beats-additive-{where}", relation="better", metric=metric, dataset=dataset,
            a=Cell("glow"), b=Cell("glow[coupling=additive]"), paper="1807.03039", table="Glow Fig. 3",
            statement=f"Glow with affine coupling has lower exact {metric} than with additive coupling",
        ))
    from .realnvp import register_approaches_true_nll

    register_approaches_true_nll(register, "glow")
