"""Monotonic rational-quadratic splines: Durkan, Bekasov, Murray & Papamakarios, *Neural
Spline Flows*, arXiv 1906.04032 (Sec. 3.1 and Appendix A), the elementwise map of
``realnvp[coupling=spline]``'s coupling layer (:class:`.layers.MaskedSplineCoupling`).

A spline maps ``[-B, B]`` onto itself through ``K`` bins. It is given by ``K + 1`` knots
``(x_k, y_k)``, increasing, from ``(-B, -B)`` to ``(B, B)``, and positive derivatives
``d_k`` at them; outside ``[-B, B]`` it is the identity ("linear tails", Sec. 3.1), so the
boundary derivatives are ``d_0 = d_K = 1`` and the map and its slope are continuous there.
A conditioner therefore gives ``3K - 1`` numbers per transformed value: ``K`` widths, ``K``
heights and ``K - 1`` interior derivatives (:func:`spline_params`).

In bin ``k``, with ``w_k = x_{k+1} - x_k``, ``h_k = y_{k+1} - y_k``, ``s_k = h_k / w_k`` and
``xi = (x - x_k) / w_k`` in ``[0, 1]`` (Eq. 4, Gregory & Delbourgo's rational quadratic)::

    y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]

its derivative (Eq. 5)::

    dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]^2

and its inverse (Appendix A): ``xi`` is the root in ``[0, 1]`` of ``a xi^2 + b xi + c = 0``
with ``a = h_k (s_k - d_k) + (y - y_k) D``, ``b = h_k d_k - (y - y_k) D``,
``c = -s_k (y - y_k)``, ``D = d_{k+1} + d_k - 2 s_k``, taken in the form
``xi = 2c / (-b - sqrt(b^2 - 4ac))``, which does not cancel when ``a`` is near 0.

Every function here runs the same ops on every input, whatever bin or tail it falls in
(the bin is found by counting knots, the tails chosen by ``torch.where``), so a training
step always costs the same counted FLOPs: the host's meter charges a step by its ops
and audits that the cost does not change (docs/integrity.md). Computing the spline on the
inside values only (boolean indexing, the usual way) would make the cost follow how many
values fall in the tails.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: smallest bin width and height, as a share of ``2B`` (keeps every bin open)
MIN_BIN = 1e-3
#: smallest derivative at a knot (keeps the map strictly increasing)
MIN_DERIVATIVE = 1e-3


def _knots(raw: torch.Tensor, bound: float, min_bin: float) -> torch.Tensor:
    """``K + 1`` increasing knot positions from ``-B`` to ``B``: bin sizes are a softmax of the
    ``K`` raw values, each at least ``min_bin`` of the interval."""
    bins = raw.shape[-1]
    sizes = min_bin + (1 - min_bin * bins) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0))  # 0, s_1, s_1 + s_2, ..., ~1
    knots = 2 * bound * knots - bound
    # the ends exactly at -B and B: the cumulative sum's rounding must not open a gap at the tails
    end = torch.full_like(knots[..., :1], bound)
    return torch.cat([-end, knots[..., 1:-1], end], dim=-1)


def _derivatives(raw: torch.Tensor, min_derivative: float) -> torch.Tensor:
    """``K + 1`` knot derivatives: ``min + softplus(raw + c)`` inside, with ``c`` such that a raw
    value of 0 gives exactly 1 (so a zero-initialised conditioner makes the identity), and 1 at
    both ends, where the spline meets its identity tails."""
    shift = math.log(math.expm1(1 - min_derivative))  # softplus(shift) = 1 - min_derivative
    inner = min_derivative + F.softplus(raw + shift)
    one = torch.ones_like(inner[..., :1])
    return torch.cat([one, inner, one], dim=-1)


def spline_params(theta: torch.Tensor, bound: float, min_bin: float = MIN_BIN,
                  min_derivative: float = MIN_DERIVATIVE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots and derivatives from a conditioner's ``3K - 1`` values (last dimension of ``theta``:
    ``K`` widths, ``K`` heights, ``K - 1`` derivatives, unconstrained): ``(x_k, y_k, d_k)``, each
    with ``K + 1`` entries in its last dimension. All zero raw values give the identity
    (equal bins, every ``s_k = 1`` and ``d_k = 1``)."""
    bins = (theta.shape[-1] + 1) // 3
    if theta.shape[-1] != 3 * bins - 1 or bins < 2:
        raise ValueError(f"a spline of K >= 2 bins takes 3K - 1 values, not {theta.shape[-1]}")
    if min_bin * bins >= 1:
        raise ValueError(f"{bins} bins of at least {min_bin} of the interval do not fit in it")
    widths, heights, derivatives = theta.split([bins, bins, bins - 1], dim=-1)
    return _knots(widths, bound, min_bin), _knots(heights, bound, min_bin), _derivatives(derivatives, min_derivative)


def _bin_index(knots: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The bin ``k`` of ``x_k <= v`` (``v`` clamped into ``[-B, B]``): the number of interior
    knots at or below ``v``. A comparison with each of the ``K - 1`` knots rather than a binary
    search (``searchsorted``, about ``log2 K`` comparisons): a few more comparisons at ``K = 8``,
    each an element operation that the meter charges as what it is, with no rule of its own."""
    return (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)


def _in_bin(knots_x, knots_y, derivatives, k):
    """``(x_k, w_k, y_k, h_k, d_k, d_{k+1})`` of bin ``k`` for every value."""
    def at(t, i):
        return t.gather(-1, i).squeeze(-1)

    x0, x1 = at(knots_x, k), at(knots_x, k + 1)
    y0, y1 = at(knots_y, k), at(knots_y, k + 1)
    return x0, x1 - x0, y0, y1 - y0, at(derivatives, k), at(derivatives, k + 1)


def rational_quadratic_spline(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor,
                              derivatives: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline (Eq. 4) applied elementwise: ``(y, log dy/dx)`` (Eq. 5), the identity and 0
    outside ``[-B, B]``. Knots and derivatives have one more dimension than ``x`` (the ``K + 1``)."""
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)  # tails are computed inside too and discarded: finite everywhere
    x0, w, y0, h, d0, d1 = _in_bin(knots_x, knots_y, derivatives, _bin_index(knots_x, xc))
    s = h / w
    xi = ((xc - x0) / w).clamp(0, 1)
    mix = xi * (1 - xi)
    denominator = s + (d1 + d0 - 2 * s) * mix
    y = y0 + h * (s * xi.square() + d0 * mix) / denominator
    slope = s.square() * (d1 * xi.square() + 2 * s * mix + d0 * (1 - xi).square())
    log_slope = torch.log(slope) - 2 * torch.log(denominator)
    return torch.where(inside, y, x), torch.where(inside, log_slope, torch.zeros_like(x))


def rational_quadratic_spline_inverse(y: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor,
                                      derivatives: torch.Tensor, bound: float) -> torch.Tensor:
    """The inverse of :func:`rational_quadratic_spline` (Appendix A; module doc)."""
    inside = (y >= -bound) & (y <= bound)
    yc = y.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _in_bin(knots_x, knots_y, derivatives, _bin_index(knots_y, yc))
    s = h / w
    dy = yc - y0
    curvature = d1 + d0 - 2 * s
    a = h * (s - d0) + dy * curvature
    b = h * d0 - dy * curvature
    c = -s * dy
    discriminant = (b.square() - 4 * a * c).clamp_min(0)  # >= 0 exactly; rounding can dip below
    xi = (2 * c / (-b - torch.sqrt(discriminant))).clamp(0, 1)
    return torch.where(inside, x0 + xi * w, y)
