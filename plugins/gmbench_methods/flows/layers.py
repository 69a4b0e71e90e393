"""Invertible layers shared by ``realnvp`` (NICE / RealNVP) and ``glow``.

Every layer maps data towards the latent in ``forward(x) -> (y, logdet)``, where ``logdet``
has shape ``(N,)`` and is ``log |det dy/dx|`` per example, and back in ``inverse(y) -> x``.
Tensors are ``(N, C)`` vectors (toy2d) or ``(N, C, H, W)`` images; per-feature parameters act
on dimension 1 and are shared over the spatial positions, whose count multiplies their
log-determinant. ``tests/test_flow_layers.py`` checks that each layer inverts and that its
log-determinant equals the log |det| of autograd's Jacobian.

Layers and their equations:

* :class:`MaskedCoupling` — RealNVP's affine coupling (arXiv 1605.08803, Eq. 9):
  ``y = b*x + (1-b) * (x * exp(s(b*x)) + t(b*x))``, ``log|det| = sum (1-b) s(b*x)``, with a
  checkerboard mask (:func:`checkerboard_mask`), a channel mask (:func:`channel_mask`) or, on
  vectors, a mask over the dimensions; ``additive=True`` is NICE's additive coupling
  (arXiv 1410.8516, Eq. 5 in mask form): ``s = 0``, ``y = x + (1-b) t(b*x)``, volume preserving.
  The scale is bounded, ``s = a * tanh(raw)`` with ``a`` learned per channel (initialised to 1):
  a choice made here for stability (an unbounded ``exp`` of a fresh network's output can
  overflow in the first steps); the paper does not constrain ``s``.
* :class:`MaskedSplineCoupling` — the neural spline flow's coupling (Durkan et al., arXiv
  1906.04032, Sec. 3 and Eq. 4), the same masks: ``y = b*x + (1-b) * g(x; theta(b*x))`` with
  ``g`` a monotonic rational-quadratic spline of ``K`` bins on ``[-B, B]`` and identity tails
  (:mod:`.splines`), applied to each value with its own ``3K - 1`` conditioner outputs;
  ``log|det| = sum (1-b) log g'``. Zero conditioner outputs give the identity (equal bins,
  unit derivatives), like the zero-initialised affine coupling.
* :class:`ChannelCoupling` — Glow's affine coupling (arXiv 1807.03039, Table 1): split the
  channels ``x = [x_a, x_b]``, ``(t, raw) = NN(x_a)``, ``y_b = (x_b + t) * scale``,
  ``log|det| = sum log scale``; ``scale = sigmoid(raw + 2)`` as in Glow's released code (it
  starts near 0.88 and can only shrink, which keeps early training stable) or ``exp(raw)``
  as the paper's table writes it; ``additive=True``: ``y_b = x_b + t``.
* :class:`BatchNormFlow` — RealNVP's batch normalisation as a flow layer (Sec. 3.7): in
  training ``y = (x - mu_B) / sqrt(var_B + eps) * exp(log_gamma) + beta`` with the batch's
  statistics, ``log|det| = sum (log_gamma - 1/2 log(var + eps))``; it keeps running averages
  that are used in evaluation, where the layer is a fixed per-feature affine map.
* :class:`ActNorm` — Glow's activation normalisation (Sec. 3.1): ``y = (x + b) * exp(logs)``,
  ``log|det| = (H W) sum logs``, with data-dependent initialisation: in :func:`data_init`
  mode the layer sets ``b = -mean``, ``logs = -log(std + 1e-6)`` from the batch it sees
  (per channel), so its output on that batch has zero mean and unit variance, and records it
  in the buffer ``initialized``.
* :class:`InvConv1x1` — Glow's invertible 1x1 convolution in LU form (Sec. 3.2, Eq. 10):
  ``W = P L (U + diag(sign(s) exp(log|s|)))`` with ``P`` a fixed permutation, ``L`` unit lower
  triangular, ``U`` strictly upper triangular, initialised from a random rotation;
  ``log|det| = (H W) sum log|s|``. On vectors it is an invertible linear map.
* :func:`squeeze` / :func:`unsqueeze` — RealNVP's squeeze (Sec. 3.6): each 2x2 block of a
  ``C x H x W`` tensor becomes 4 channels of ``4C x H/2 x W/2``; volume preserving.
* :class:`DiagonalScaling` — NICE's final scaling layer (Sec. 3.3): ``y = x * exp(S)``,
  ``log|det| = sum S``.
* :class:`LogitTransform` — RealNVP's logit pre-processing (Sec. 4.1) of dequantised pixels:
  ``u = (x - lo + delta/2) / (hi - lo + delta)`` in ``(0, 1)``, ``p = alpha + (1 - 2 alpha) u``,
  ``y = logit(p)``; ``log|det| = sum [log(1 - 2 alpha) - log(hi - lo + delta) - log p - log(1 - p)]``.
  With it the flow's density is one of the dequantised data in the data's value range.
* :class:`CentreScale` — Glow's pre-processing: ``y = (x - (lo + hi)/2) / (hi - lo + delta)``,
  pixels in ``[-1/2, 1/2]``; ``log|det| = -D log(hi - lo + delta)``.
* :class:`SplitPrior` — Glow's split with a learned prior (the released code's ``split2d``):
  the second half of the channels, ``z_2``, is factored out with prior
  ``N(mu(z_1), exp(logs(z_1))^2)`` where ``(mu, logs)`` come from a zero-initialised 3x3
  convolution of the kept half ``z_1``. Written as a flow it whitens ``z_2``:
  ``eps = (z_2 - mu) exp(-logs)``, ``log|det| = -sum logs``, so that ``eps ~ N(0, I)``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .splines import rational_quadratic_spline, rational_quadratic_spline_inverse, spline_params


def _feature_shape(x: torch.Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel parameter over ``x`` (``(1, C)`` or ``(1, C, 1, 1)``)."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _positions(x: torch.Tensor) -> int:
    """Spatial positions sharing each per-channel parameter (1 for vectors)."""
    return math.prod(x.shape[2:])


def _sum_per_example(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


# ----------------------------------------------------------------------------- masks


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> torch.Tensor:
    """``(1, C, H, W)`` mask, 1 where ``(i + j) % 2 == parity`` (RealNVP Fig. 3, left)."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    board = ((i + j) % 2 == parity).float()
    return board.expand(channels, height, width).unsqueeze(0).clone()


def channel_mask(channels: int, parity: int = 0) -> torch.Tensor:
    """``(1, C, 1, 1)`` mask, 1 on the first half of the channels (parity 0) or the second (RealNVP Fig. 3, right)."""
    half = channels // 2
    b = torch.zeros(channels)
    if parity == 0:
        b[:half] = 1.0
    else:
        b[half:] = 1.0
    return b.view(1, channels, 1, 1)


def dimension_mask(dims: int, parity: int = 0) -> torch.Tensor:
    """``(1, D)`` mask over vector dimensions, 1 on the even (parity 0) or odd ones."""
    return (torch.arange(dims) % 2 == parity).float().view(1, dims)


# ----------------------------------------------------------------------------- couplings


class MaskedCoupling(nn.Module):
    """RealNVP's affine coupling, or NICE's additive one, with a fixed binary mask (module doc).

    Args:
        mask: 1 on the part that conditions (passes unchanged), broadcastable to ``x``.
        net: maps ``b*x`` (shape of ``x``) to ``2 C`` features (``(s_raw, t)`` along dim 1),
            its last layer zero-initialised so the layer starts as the identity.
        additive: NICE's additive coupling (``s = 0``).
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, additive: bool = False) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net
        self.additive = additive
        channels = mask.shape[1]
        self.scale_factor = None if additive else nn.Parameter(torch.ones(channels))

    def _st(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.mask
        h = self.net(x * b)
        raw, t = h.chunk(2, dim=1)
        t = t * (1 - b)
        if self.additive:
            return torch.zeros_like(t), t
        s = self.scale_factor.view(_feature_shape(x)) * torch.tanh(raw) * (1 - b)
        return s, t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x)
        y = x * torch.exp(s) + t  # on the masked part s = t = 0: y = x there
        return y, _sum_per_example(s)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._st(y)  # b*y == b*x
        return (y - t) * torch.exp(-s)


class MaskedSplineCoupling(nn.Module):
    """A rational-quadratic spline coupling with a fixed binary mask (module doc; the spline in
    :mod:`.splines`, arXiv 1906.04032): ``realnvp[coupling=spline]``.

    Args:
        mask: 1 on the part that conditions (passes unchanged), broadcastable to ``x``.
        net: maps ``b*x`` (shape of ``x``) to ``(3K - 1) C`` features, the ``3K - 1`` spline
            values of channel ``c`` at ``c (3K - 1) ... (c + 1)(3K - 1) - 1`` along dim 1; its last
            layer zero-initialised, so the layer starts as the identity.
        bins: ``K``.
        bound: ``B``; the identity outside ``[-B, B]``.
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, bins: int = 8, bound: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net, self.bins, self.bound = net, bins, bound

    def _spline(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.net(x * self.mask)
        per = 3 * self.bins - 1
        theta = h.view(h.shape[0], x.shape[1], per, *h.shape[2:]).movedim(2, -1)  # (N, C, [H, W,] 3K - 1)
        return spline_params(theta, self.bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, log_slope = rational_quadratic_spline(x, *self._spline(x), self.bound)
        keep = self.mask  # the conditioning part passes unchanged and adds nothing to log |det|
        return keep * x + (1 - keep) * y, _sum_per_example((1 - keep) * log_slope)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = rational_quadratic_spline_inverse(y, *self._spline(y), self.bound)  # b*y == b*x
        return self.mask * y + (1 - self.mask) * x


class ChannelCoupling(nn.Module):
    """Glow's affine coupling on a channel split (module doc).

    Args:
        net: maps ``x_a`` (the first ``C // 2`` channels) to ``2 (C - C // 2)`` features
            (``(t, raw)`` along dim 1); last layer zero-initialised.
        additive: ``y_b = x_b + t`` (no scale).
        scale: ``"sigmoid"`` (``sigmoid(raw + 2)``, Glow's released code) or ``"exp"``.
    """

    def __init__(self, net: nn.Module, additive: bool = False, scale: str = "sigmoid") -> None:
        super().__init__()
        if scale not in ("sigmoid", "exp"):
            raise ValueError(f"coupling scale must be 'sigmoid' or 'exp', not {scale!r}")
        self.net, self.additive, self.scale = net, additive, scale

    def _ts(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, raw = self.net(xa).chunk(2, dim=1)
        if self.additive:
            return t, torch.zeros_like(t)
        log_scale = F.logsigmoid(raw + 2.0) if self.scale == "sigmoid" else raw
        return t, log_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = x.shape[1] // 2
        xa, xb = x[:, :half], x[:, half:]
        t, log_scale = self._ts(xa)
        yb = (xb + t) * torch.exp(log_scale)
        return torch.cat([xa, yb], dim=1), _sum_per_example(log_scale)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        half = y.shape[1] // 2
        ya, yb = y[:, :half], y[:, half:]
        t, log_scale = self._ts(ya)
        return torch.cat([ya, yb * torch.exp(-log_scale) - t], dim=1)


# ----------------------------------------------------------------------------- normalisation


class BatchNormFlow(nn.Module):
    """RealNVP's batch normalisation as an invertible layer (module doc).

    Args:
        channels: features normalised (statistics over the batch and spatial positions).
        momentum: running averages ``r <- (1 - m) r + m * batch``, used in evaluation.
        eps: added to the variance.
    """

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-4) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dims)
            var = (x - mean.view(_feature_shape(x))).pow(2).mean(dims)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach())
            return mean, var
        return self.running_mean, self.running_var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = self._stats(x)
        shape = _feature_shape(x)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        y = y * torch.exp(self.log_gamma).view(shape) + self.beta.view(shape)
        logdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * _positions(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        shape = _feature_shape(y)
        mean, var = self.running_mean, self.running_var  # sampling runs in evaluation mode
        x = (y - self.beta.view(shape)) * torch.exp(-self.log_gamma).view(shape)
        return x * torch.sqrt(var.view(shape) + self.eps) + mean.view(shape)


_DATA_INIT = {"on": False}


@contextlib.contextmanager
def data_init():
    """Within this block every :class:`ActNorm` not yet initialised takes its parameters
    from the batch it sees (Glow Sec. 3.1), then marks itself initialised."""
    previous = _DATA_INIT["on"]
    _DATA_INIT["on"] = True
    try:
        yield
    finally:
        _DATA_INIT["on"] = previous


class ActNorm(nn.Module):
    """Glow's actnorm with data-dependent initialisation (module doc)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.logs = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    @torch.no_grad()
    def _initialise(self, x: torch.Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        std = (x - mean.view(_feature_shape(x))).pow(2).mean(dims).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if _DATA_INIT["on"] and not bool(self.initialized):
            self._initialise(x)
        shape = _feature_shape(x)
        y = (x + self.bias.view(shape)) * torch.exp(self.logs).view(shape)
        return y, (self.logs.sum() * _positions(x)).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        shape = _feature_shape(y)
        return y * torch.exp(-self.logs).view(shape) - self.bias.view(shape)


class ActNormNoDet(ActNorm):
    """ActNorm used inside a conditioner network (Glow's NN): the output only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]


# ----------------------------------------------------------------------------- linear maps


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution, LU-decomposed (module doc)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # a random rotation (host-seeded RNG)
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x @ w.T
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self._mix(x, self.weight())
        return y, (self.log_s.sum() * _positions(x)).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._mix(y, torch.linalg.inv(self.weight()))


class DiagonalScaling(nn.Module):
    """NICE's final diagonal scaling ``y = x * exp(S)`` over all latent dimensions (Sec. 3.3)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dims))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale)


# ----------------------------------------------------------------------------- reshaping


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 4C, H/2, W/2)``: each 2x2 block to 4 channels (RealNVP Sec. 3.6)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    n, c, h, w = x.shape
    x = x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, 2 * h, 2 * w)


class Squeeze(nn.Module):
    """:func:`squeeze` as a layer (log-determinant 0)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return unsqueeze(y)


# ----------------------------------------------------------------------------- pre-processing


def dequantise(x: torch.Tensor, delta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation: each value moves uniformly within its bin of width ``delta``
    (Theis et al., arXiv 1511.01844), as the host's likelihood metric does."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (u - 0.5) * delta


class LogitTransform(nn.Module):
    """RealNVP's logit pre-processing of dequantised pixels (module doc)."""

    def __init__(self, lo: float, hi: float, delta: float, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < alpha < 0.5:  # 0: the range's edges, which float32 reaches, map to +-inf
            raise ValueError(f"logit alpha must be in (0, 0.5), not {alpha!r}")
        self.lo, self.width, self.delta, self.alpha = lo - delta / 2, hi - lo + delta, delta, alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (x - self.lo) / self.width
        y = torch.log(p) - torch.log1p(-p)
        per = math.log(1 - 2 * self.alpha) - math.log(self.width) - torch.log(p) - torch.log1p(-p)
        return y, _sum_per_example(per)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(y)
        return (p - self.alpha) / (1 - 2 * self.alpha) * self.width + self.lo


class CentreScale(nn.Module):
    """Glow's pre-processing: dequantised pixels to ``[-1/2, 1/2]`` (module doc)."""

    def __init__(self, lo: float, hi: float, delta: float) -> None:
        super().__init__()
        self.centre, self.width = (lo + hi) / 2, hi - lo + delta

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = x[0].numel()
        return (x - self.centre) / self.width, x.new_full((x.shape[0],), -d * math.log(self.width))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.width + self.centre


# ----------------------------------------------------------------------------- split prior


class SplitPrior(nn.Module):
    """Glow's split with a learned conditional prior, written as a whitening flow (module doc).

    ``forward(h) -> (z_1, eps, logdet)``: keeps the first ``C // 2`` channels ``z_1`` and
    returns the factored-out half whitened, ``eps = (z_2 - mu(z_1)) exp(-logs(z_1))``;
    ``inverse(z_1, eps) -> h``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        keep = channels // 2
        self.conv = nn.Conv2d(keep, 2 * (channels - keep), 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        # Glow's Conv2dZeros: the output is multiplied by exp(3 * logs), logs zero-initialised
        self.out_logs = nn.Parameter(torch.zeros(2 * (channels - keep), 1, 1))

    def _prior(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(z1) * torch.exp(3 * self.out_logs)
        mean, logs = h.chunk(2, dim=1)
        return mean, logs

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keep = h.shape[1] // 2
        z1, z2 = h[:, :keep], h[:, keep:]
        mean, logs = self._prior(z1)
        eps = (z2 - mean) * torch.exp(-logs)
        return z1, eps, -_sum_per_example(logs)

    def inverse(self, z1: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        mean, logs = self._prior(z1)
        return torch.cat([z1, mean + torch.exp(logs) * eps], dim=1)


# ----------------------------------------------------------------------------- conditioners


class ConvNet(nn.Module):
    """Coupling network for images, Glow's ``NN()`` at CPU width: 3x3 conv, norm, ReLU,
    1x1 conv, norm, ReLU, zero-initialised 3x3 conv (so the coupling starts at its identity
    or, for Glow's sigmoid scale, at a constant scale).

    Args:
        c_in, c_out: channels in and out.
        hidden: hidden channels.
        norm: ``"actnorm"`` (Glow) or ``"batchnorm"`` (RealNVP's ResNets use batch norm).
    """

    def __init__(self, c_in: int, c_out: int, hidden: int, norm: str = "actnorm") -> None:
        super().__init__()

        def make_norm():
            return ActNormNoDet(hidden) if norm == "actnorm" else nn.BatchNorm2d(hidden, momentum=0.05)

        self.body = nn.Sequential(
            nn.Conv2d(c_in, hidden, 3, padding=1), make_norm(), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), make_norm(), nn.ReLU(),
        )
        self.out = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def mlp_conditioner(in_dim: int, out_dim: int, size: str) -> nn.Module:
    """The shared toy2d backbone (:class:`gmbench.backbones.MLP`, ``cond=False``: a flow has
    no time input) with its last layer zeroed, so the coupling starts at the identity."""
    from gmbench.backbones import MLP

    net = MLP(in_dim, out_dim, size=size, cond=False)
    nn.init.zeros_(net.out.weight)
    nn.init.zeros_(net.out.bias)
    return net


def conv_hidden(size: str) -> int:
    """Hidden channels of :class:`ConvNet` at a size preset: twice the U-Net's base channels
    (``tiny`` 64, ``small`` 96, ``base`` 128, ``large`` 256)."""
    from gmbench.backbones import size_config

    return 2 * size_config("unet", size)["channels"]


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    """``log N(eps; 0, I)`` per example, summed over all but the first dimension."""
    return -0.5 * (eps.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
