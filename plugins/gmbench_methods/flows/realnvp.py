"""RealNVP: Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*, arXiv 1605.08803;
with NICE (Dinh, Krueger & Bengio, *NICE: Non-linear Independent Components Estimation*,
arXiv 1410.8516) as its additive variant, ``coupling="additive"``, and the rational-quadratic
spline coupling of neural spline flows (Durkan, Bekasov, Murray & Papamakarios, *Neural Spline
Flows*, arXiv 1906.04032) as ``coupling="spline"``.

The model is a bijection ``f`` from data to a latent with prior ``N(0, I)``; its density is
exact by the change of variables (Eq. 3), ``log p(x) = log N(f(x); 0, I) + log |det df/dx|``,
and training maximises it (see :mod:`gmbench_methods.flows.base` for the dequantised
objective and the bits/dim it gives). Layers (equations in :mod:`.layers`):

* **Affine coupling** (Eqs. 6-9), mask form ``y = b x + (1 - b) (x exp(s(b x)) + t(b x))``,
  log-determinant ``sum (1 - b) s``; ``s`` is bounded as ``a tanh(raw)`` (a choice here,
  see ``layers``). **Additive coupling** (NICE Eq. 5): ``s = 0``; NICE's diagonal scaling
  layer ``exp(S)`` (NICE Sec. 3.3) then ends the flow, applied to the whole latent, and is
  its only volume change besides the normalisation layers. Everything else stays as for the
  affine flow, so ``realnvp`` against ``realnvp[coupling=additive]`` isolates the coupling
  (Glow's Fig. 3 ablation does the same).
* **Spline coupling** (NSF Sec. 3, ``coupling="spline"``): the same masks and conditioners,
  but each transformed value goes through its own monotonic rational-quadratic spline,
  ``y = b x + (1 - b) g(x; theta(b x))``, ``log|det| = sum (1 - b) log g'``, with ``bins`` ``K``
  (default 8, as zuko's NSF) on ``[-B, B]`` (``tail_bound``, default 3) and the
  identity outside (the spline in :mod:`.splines`). The conditioner returns ``3K - 1`` values
  per value (``K`` widths, ``K`` heights, ``K - 1`` inner derivatives; 23 at ``K = 8``), so its
  last layer is ``11.5 x`` wider than the affine one's. Zero outputs give the identity, so the
  zero-initialised flow starts as the identity as the affine one does. Because a spline moves
  only ``[-B, B]``, the flow begins with one more ``norm`` layer that brings the data there
  (actnorm's data initialisation standardises each coordinate: 8gaussians reaches +-5.75 raw,
  +-2 standardised); with ``norm="none"`` choose ``tail_bound`` to cover the data. The paper's
  flows also mix the dimensions between couplings with invertible linear layers (LU form) or
  permutations; here the masks alternate as in RealNVP, so ``realnvp`` against
  ``realnvp[coupling=spline]`` isolates the coupling.
  Images use the same multi-scale layout (the last layer of each ``ConvNet`` gives ``3K - 1``
  channels per channel: 3-4x the affine flow's FLOPs per step on digits).
* **toy2d**: ``couplings`` coupling layers (default 4, as many as ``glow``'s steps) with
  masks alternating over the two dimensions (``b = (1, 0)``, ``(0, 1)``, ...), each conditioner a shared
  :class:`gmbench.backbones.MLP` at the budget's preset (``cond=False``: a flow has no time
  input) reading ``b x`` and returning ``(s_raw, t)``, its last layer zeroed so every
  coupling starts as the identity.
* **Images**, the multi-scale architecture (Sec. 3.6): each scale but the last is 3 coupling
  layers with alternating checkerboard masks, a squeeze (``C x H x W`` -> ``4C x H/2 x W/2``),
  3 coupling layers with alternating channel masks, then half of the channels is factored
  out to the prior; the last scale is 4 checkerboard coupling layers. ``scales`` defaults to
  2 on 8x8 digits: ``1x8x8`` -> (3 checkerboard, squeeze, 3 channel) -> ``4x4x4``, 32 dims
  factored out, then 4 checkerboard couplings on ``2x4x4``; the latent is the 32 + 32
  dimensions together. Conditioners: :class:`.layers.ConvNet` (3x3 conv, norm, ReLU,
  1x1 conv, norm, ReLU, zero-initialised 3x3 conv) with ``2 x`` the U-Net preset's base
  channels (64 at ``tiny``, 96 at ``small``). The paper's are deep ResNets with batch and
  weight normalisation; the shared ``UNet`` is not used because its time input means nothing
  to a flow and because a flow calls its conditioner once per coupling layer (10 here): ten
  U-Nets would leave the budget a few dozen steps at ``smoke``. The same ``ConvNet`` serves
  ``glow``, so the two compare on one conditioner.
* **Normalisation** (``norm=``) after every coupling layer: ``"actnorm"`` (default; Glow's
  per-channel affine layer with data-dependent initialisation in ``on_stage_start``),
  ``"batchnorm"`` (the paper's Sec. 3.7: batch normalisation as a flow layer, batch
  statistics in training, running averages in evaluation, where it is a fixed affine map and
  the likelihood stays exact) or ``"none"`` (NICE had none). With actnorm the data
  initialisation makes a fresh image flow's first layers standardise their inputs. Why not the paper's default:
  at the step counts a CPU budget buys, the running averages that evaluation must use lag
  the batch statistics the network was trained with, and the exact test NLL pays for the
  mismatch. Measured on 8gaussians, seed 0: at ``small`` (1e12 FLOPs, 8 couplings, 404
  steps) batch norm gave 4.86 nats at test while its training loss was 4.26; at 3.5e10 FLOPs
  (55 steps, lr 3e-3) batch norm 5.59, actnorm 4.42. Actnorm has no train/test difference.
  Inside the image conditioners: actnorm with ``norm="actnorm"``, else ``nn.BatchNorm2d``
  (the paper's ResNets use batch norm).
* **Images: dequantisation and the logit transform** (Sec. 4.1): the discrete pixels get
  uniform noise within their bin (width ``delta = (hi - lo) / (levels - 1)``), are mapped to
  ``(0, 1)`` over ``[lo - delta/2, hi + delta/2]``, squeezed into ``[alpha, 1 - alpha]``
  (``logit_alpha = 0.05``, the paper's) and passed through ``logit``. The log-determinant of
  that map is part of ``log p``, so the likelihood is the density of the dequantised pixels in
  the data's range and the host's bits/dim are of the discrete data.

Deviations (CPU scale): small conditioners and few layers; no L2 weight decay (the paper
used 5e-5); Adam with a short linear warm-up; gradient-norm clipping at 100 (guards against
one bad batch; it rarely acts). Sampler ``sample``: ``eps ~ N(0, I)``, one inverse pass
(NFE 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.method import MethodError, SamplerInfo

from .base import FlowMethod
from .layers import (
    ActNorm,
    BatchNormFlow,
    ConvNet,
    DiagonalScaling,
    LogitTransform,
    MaskedCoupling,
    MaskedSplineCoupling,
    channel_mask,
    checkerboard_mask,
    conv_hidden,
    dimension_mask,
    mlp_conditioner,
    squeeze,
    unsqueeze,
)

COUPLINGS = ("affine", "additive", "spline")
# coupling="spline": bins as zuko's NSF; the spline's interval [-B, B] (module doc)
DEFAULT_BINS = 8
DEFAULT_TAIL_BOUND = 3.0
NORMS = ("batchnorm", "actnorm", "none")


def _norm_layer(norm: str, channels: int, momentum: float) -> nn.Module | None:
    if norm == "batchnorm":
        return BatchNormFlow(channels, momentum=momentum)
    if norm == "actnorm":
        return ActNorm(channels)
    return None



def _coupling_layer(coupling: str, mask: torch.Tensor, make_net, channels: int, bins: int,
                    bound: float) -> nn.Module:
    """One coupling layer of the kind ``coupling`` with its mask; ``make_net(c_out)`` builds
    its conditioner for ``c_out`` output features: ``(s_raw, t)`` per channel for the affine and
    additive couplings, the spline's ``3K - 1`` values per channel for the spline one."""
    if coupling == "spline":
        return MaskedSplineCoupling(mask, make_net((3 * bins - 1) * channels), bins, bound)
    return MaskedCoupling(mask, make_net(2 * channels), coupling == "additive")


class RealNVPFlow(nn.Module):
    """The RealNVP bijection ``x -> eps`` (module doc): ``forward(x) -> (eps, logdet)``,
    ``forward(eps, reverse=True) -> x``."""

    def __init__(self, shape: tuple[int, ...], size: str, coupling: str, norm: str, couplings: int, scales: int,
                 hidden: int, pre: nn.Module | None, bn_momentum: float, bins: int = 8, bound: float = 3.0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.pre = pre
        # splines move only [-B, B] (identity tails), so their flow starts by normalising the
        # data into it (actnorm's data-dependent init standardises); affine couplings need none
        self.lead = _norm_layer(norm, self.shape[0], bn_momentum) if coupling == "spline" else None

        def with_norm(coupling: nn.Module, channels: int) -> list[nn.Module]:
            layer = _norm_layer(norm, channels, bn_momentum)
            return [coupling] if layer is None else [coupling, layer]

        self.blocks = nn.ModuleList()  # scales before the last: (checkerboard, channel) layer lists
        self.factored: list[tuple[int, ...]] = []  # shapes factored out, in order
        if len(self.shape) == 1:  # toy2d: alternating masks over the dimensions
            (d,) = self.shape
            layers = []
            for i in range(couplings):
                layers += with_norm(_coupling_layer(coupling, dimension_mask(d, i % 2),
                                                    lambda out: mlp_conditioner(d, out, size), d, bins, bound), d)
            self.final = nn.ModuleList(layers)
            self.final_shape = self.shape
        else:
            c, h, w = self.shape
            norm_in_net = "actnorm" if norm == "actnorm" else "batchnorm"

            def layer(mask, channels):
                return _coupling_layer(coupling, mask, lambda out: ConvNet(channels, out, hidden, norm_in_net),
                                       channels, bins, bound)

            for _ in range(scales - 1):
                checker = []
                for i in range(3):
                    checker += with_norm(layer(checkerboard_mask(c, h, w, i % 2), c), c)
                c, h, w = 4 * c, h // 2, w // 2
                channel = []
                for i in range(3):
                    channel += with_norm(layer(channel_mask(c, i % 2), c), c)
                self.blocks.append(nn.ModuleDict({"checker": nn.ModuleList(checker), "channel": nn.ModuleList(channel)}))
                self.factored.append((c - c // 2, h, w))
                c = c // 2
            final = []
            for i in range(4):
                final += with_norm(layer(checkerboard_mask(c, h, w, i % 2), c), c)
            self.final = nn.ModuleList(final)
            self.final_shape = (c, h, w)
        self.scaling = DiagonalScaling(_numel(self.shape)) if coupling == "additive" else None  # NICE Sec. 3.3

    def forward(self, x, reverse: bool = False):
        if reverse:
            return self._inverse(x)
        logdet = x.new_zeros(x.shape[0])
        h = x
        for first in (self.pre, self.lead):
            if first is not None:
                h, ld = first(h)
                logdet = logdet + ld
        out = []
        for block in self.blocks:
            for layer in block["checker"]:
                h, ld = layer(h)
                logdet = logdet + ld
            h = squeeze(h)
            for layer in block["channel"]:
                h, ld = layer(h)
                logdet = logdet + ld
            keep = h.shape[1] // 2
            out.append(h[:, keep:].flatten(1))  # factored out (Sec. 3.6)
            h = h[:, :keep]
        for layer in self.final:
            h, ld = layer(h)
            logdet = logdet + ld
        out.append(h.flatten(1))
        eps = torch.cat(out, dim=1)
        if self.scaling is not None:
            eps, ld = self.scaling(eps)
            logdet = logdet + ld
        return eps, logdet

    def _inverse(self, eps):
        n = eps.shape[0]
        if self.scaling is not None:
            eps = self.scaling.inverse(eps)
        sizes = [_numel(s) for s in self.factored]
        parts = list(eps.split(sizes + [_numel(self.final_shape)], dim=1))
        h = parts[-1].reshape(n, *self.final_shape)
        for layer in reversed(self.final):
            h = layer.inverse(h)
        for block, shape, part in zip(reversed(self.blocks), reversed(self.factored), reversed(parts[:-1])):
            h = torch.cat([h, part.reshape(n, *shape)], dim=1)
            for layer in reversed(block["channel"]):
                h = layer.inverse(h)
            h = unsqueeze(h)
            for layer in reversed(block["checker"]):
                h = layer.inverse(h)
        if self.lead is not None:
            h = self.lead.inverse(h)
        if self.pre is not None:
            h = self.pre.inverse(h)
        return h


def _numel(shape) -> int:
    return math.prod(shape)


class RealNVP(FlowMethod):
    """RealNVP, NICE with ``coupling="additive"``, or a spline coupling flow with ``coupling="spline"`` (module doc).

    Args:
        data: the dataset spec (toy2d or image).
        model_size: preset of the conditioners (MLP on toy2d, ConvNet width on images).
        coupling: ``"affine"`` (RealNVP), ``"additive"`` (NICE, with its final scaling layer) or
            ``"spline"`` (rational-quadratic spline coupling of neural spline flows, arXiv 1906.04032,
            after a leading ``norm`` layer).
        norm: ``"batchnorm"`` (the paper's), ``"actnorm"`` or ``"none"``.
        couplings: coupling layers on toy2d (masks alternate over the two dimensions).
        bins: ``coupling="spline"``: bins ``K`` of each spline (3K - 1 conditioner outputs per value).
        tail_bound: ``coupling="spline"``: the splines act on ``[-B, B]`` and are the identity outside.
        scales: scales of the multi-scale architecture on images (the last one has no squeeze).
        hidden: hidden channels of the image conditioners; None: twice the U-Net preset's base.
        logit_alpha: the logit transform's ``alpha`` (images).
        bn_momentum: running-average momentum of the batch-norm layers.
        lr: Adam learning rate.
        warmup_steps: linear learning-rate warm-up.
        grad_clip: gradient-norm clipping (None: off).
        init_examples: examples of the actnorm data-dependent initialisation (``norm="actnorm"``).
    """

    name = "realnvp"
    paper = "1605.08803"
    title = "Density estimation using Real NVP (NICE as coupling='additive', NSF splines as coupling='spline')"
    samplers = (SamplerInfo("sample", adjustable_nfe=False, deterministic=False, default_nfe=1),)

    def __init__(
        self,
        data,
        model_size: str = "small",
        coupling: str = "affine",
        norm: str = "actnorm",
        couplings: int = 4,
        bins: int | None = None,
        tail_bound: float | None = None,
        scales: int | None = None,
        hidden: int | None = None,
        logit_alpha: float = 0.05,
        bn_momentum: float = 0.05,
        lr: float = 1e-3,
        warmup_steps: int = 20,
        grad_clip: float | None = 100.0,
        init_examples: int = 256,
    ) -> None:
        super().__init__(data, model_size, lr, warmup_steps, grad_clip, init_examples)
        if coupling not in COUPLINGS:
            raise MethodError(f"realnvp: coupling must be one of {COUPLINGS}, not {coupling!r}")
        if norm not in NORMS:
            raise MethodError(f"realnvp: norm must be one of {NORMS}, not {norm!r}")
        if isinstance(couplings, bool) or not isinstance(couplings, int) or couplings < 1:
            raise MethodError(f"realnvp: couplings must be a positive integer, not {couplings!r}")
        if not 0.0 < bn_momentum <= 1.0:
            raise MethodError(f"realnvp: bn_momentum must be in (0, 1], not {bn_momentum!r}")
        if coupling != "spline" and (bins is not None or tail_bound is not None):
            raise MethodError(f"realnvp: bins and tail_bound apply to coupling=spline, not coupling={coupling}")
        bins = DEFAULT_BINS if bins is None else bins
        tail_bound = DEFAULT_TAIL_BOUND if tail_bound is None else tail_bound
        if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 100:
            raise MethodError(f"realnvp: bins must be an integer in [2, 100], not {bins!r}")
        if isinstance(tail_bound, bool) or not isinstance(tail_bound, (int, float)) or not 0 < tail_bound < math.inf:
            raise MethodError(f"realnvp: tail_bound must be a finite number > 0, not {tail_bound!r}")
        self.coupling, self.norm, self.bins, self.tail_bound = coupling, norm, bins, float(tail_bound)
        pre = None
        if data.modality == "image":
            c, h, w = data.shape
            if scales is None:
                scales = 2
            if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
                raise MethodError(f"realnvp: scales must be a positive integer, not {scales!r}")
            side = 2 ** (scales - 1)
            if h % side or w % side or min(h, w) // side < 2:
                raise MethodError(f"realnvp: {scales} scales need the image sides ({h}x{w}) divisible by {side} "
                                  "and at least 2 pixels at the last scale (its checkerboard masks)")
            # alpha = 0 maps the dequantised range's edges (reached in float32) to +-inf
            if not 0.0 < logit_alpha < 0.5:
                raise MethodError(f"realnvp: logit_alpha must be in (0, 0.5) (paper: 0.05), not {logit_alpha!r}")
            lo, hi = data.value_range
            pre = LogitTransform(lo, hi, self.bin_width, logit_alpha)
        self.scales = scales
        self.hidden = hidden or conv_hidden(model_size)
        self.flow = RealNVPFlow(data.shape, model_size, coupling, norm, couplings, scales or 1,
                                self.hidden, pre, bn_momentum, bins, self.tail_bound)

    def backbone(self) -> str:
        """``"MLP(small, ...M, 4 nets)"`` on toy2d (the shared backbone per coupling),
        ``"ConvNet(small, ...M, 10 nets)"`` on images."""
        from gmbench.method import backbone_label

        nets = [m for m in self.flow.modules() if isinstance(m, (MaskedCoupling, MaskedSplineCoupling))]
        family = "MLP" if self.data.modality == "toy2d" else "ConvNet"
        return backbone_label(family, self.model_size, self.num_parameters(), nets=len(nets))


@hookimpl
def gmbench_register_methods(register):
    register(RealNVP)


@hookimpl
def gmbench_register_claims(register):
    """Affine coupling beats additive coupling in likelihood (Glow, arXiv 1807.03039, Fig. 3:
    the same flow with affine couplings reaches lower NLL than with additive ones; NICE is the
    additive flow): ``realnvp`` against ``realnvp[coupling=additive]`` on every toy2d set
    (``test_nll``) and on digits (``test_bpd``)."""
    from gmbench.claims import Cell, PaperClaim

    for metric, dataset in (("test_nll", "modality:toy2d"), ("test_bpd", "digits")):
        where = "toy2d" if dataset.startswith("modality:") else dataset
        register(PaperClaim(
            name=f"realnvp-affine-beats-nice-additive-{where}", relation="better", metric=metric, dataset=dataset,
            a=Cell("realnvp"), b=Cell("realnvp[coupling=additive]"), paper="1807.03039", table="Glow Fig. 3",
            statement=f"affine coupling (RealNVP) gives lower exact {metric} than additive coupling (NICE) in the same flow",
        ))
    register_approaches_true_nll(register, "realnvp")
    register_approaches_true_nll(register, "realnvp[coupling=spline]")


#: how close (nats) a flow's exact test NLL must come to the true density's on the same test
#: points to "approach the entropy": issue 11's parity criterion (docs/parity_flows.md)
ENTROPY_TOLERANCE_NATS = 0.05


def register_approaches_true_nll(register, label: str) -> None:
    """Exact maximum likelihood drives the expected test NLL down to the data's entropy (the
    excess is KL(p || p_model) >= 0; RealNVP arXiv 1605.08803 section 2): on a toy2d set,
    whose density gmbench knows, ``label``'s exact test NLL is within
    :data:`ENTROPY_TOLERANCE_NATS` of the true density's on the same test points (the
    true-distribution floor record's ``test_nll``, gmbench.floor)."""
    from gmbench.claims import Cell, PaperClaim

    name = label.replace("[coupling=", "-").replace("]", "")
    register(PaperClaim(
        name=f"{name}-approaches-true-nll-toy2d", relation="tie", metric="test_nll", dataset="modality:toy2d",
        a=Cell(label), b=Cell("floor[reference]"), tolerance=ENTROPY_TOLERANCE_NATS,
        paper="1605.08803", table="RealNVP section 2 (exact maximum likelihood)",
        statement=f"{label}'s exact test NLL is within {ENTROPY_TOLERANCE_NATS:g} nats of the true density's "
                  "on the same test points (the noise floor's test_nll)",
    ))
