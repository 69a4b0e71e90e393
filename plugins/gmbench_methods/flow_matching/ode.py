"""ODE helpers shared by ``flow-matching`` (arXiv 2210.02747) and ``rectified-flow``
(arXiv 2209.03003).

Both methods learn a velocity field ``v_theta(x, t)`` whose ODE ``dx/dt = v_theta(x, t)``
carries noise ``x_0 ~ N(0, I)`` at ``t = 0`` to data at ``t = 1``. This module holds the
pieces they share:

* the backbone: ``gmbench.backbones.MLP`` for toy2d, ``UNet`` for images, conditioned on
  ``t`` in ``[0, 1]`` (the backbones' convention), output layer zeroed so training starts
  from ``v = 0`` (as ``ddpm`` does);
* fixed-step samplers: Euler (one call per step) and explicit midpoint (two calls per step);
  ``dopri5`` through ``torchdiffeq.odeint`` (adaptive);
* the log-likelihood by the instantaneous change of variables (Neural ODE, arXiv 1806.07366,
  Theorem 1; FFJORD, arXiv 1810.01367, Eq. 4):
  ``log p_1(x) = log p_0(z(0)) - int_0^1 div v(z(t), t) dt`` with ``z(1) = x``, integrated
  backwards from ``t = 1`` to ``t = 0`` with fixed-step classical RK4 (4 divergence
  evaluations per step) or adaptive Dormand-Prince 5(4) (``steps="adaptive"``). The
  divergence is the exact trace of the Jacobian (one backward
  pass per dimension: toy2d) or Hutchinson's estimate ``eps^T (dv/dx) eps`` with Rademacher
  ``eps`` (Hutchinson 1989; FFJORD §2.2), one ``eps`` per example held fixed along the
  trajectory, so the log-likelihood estimate is unbiased (the trajectory ``z`` itself does
  not depend on ``eps``, and the estimate is linear in the traces);
* minibatch optimal-transport coupling (Tong et al., arXiv 2302.00482, §3.2; Pooladian et
  al., arXiv 2304.14772): within a batch, noise and data are re-paired by the exact
  assignment that minimises the summed squared distance (``scipy.optimize.
  linear_sum_assignment``). The distance matrix is computed in torch (metered); the
  assignment runs in scipy, which the FLOP meter cannot see: its cost shows only in the
  stage's wall time.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from gmbench.backbones import MLP, UNet
from gmbench.data.base import DataSpec

#: ``steps`` value of ``ode_log_likelihood`` that selects the adaptive solver (dopri5)
ADAPTIVE = "adaptive"
#: rtol = atol of the adaptive likelihood ODE, the default of every method that uses it. At
#: small, 1e-3 was 0.012 bits/dim off 1e-4 for flow matching on digits, and 1e-4 was 0.0001 nats
#: off 1e-5 for score-sde on 8gaussians (docs/methods/score-sde.md, "Likelihood solver")
DEFAULT_LIKELIHOOD_TOL = 1e-4


def with_tolerances(samplers: tuple, name: str, rtol: float, atol: float) -> tuple:
    """``samplers`` with the adaptive sampler ``name`` stating the tolerances it solves at in its
    ``params``, which the host records as the run's ``sampler_params``. A method sets the result
    on the instance (``self.samplers``), which knows its tolerances (``--set``); the class's
    tuple stays as declared."""
    from dataclasses import replace

    return tuple(replace(s, params={**s.params, "rtol": float(rtol), "atol": float(atol)}) if s.name == name else s
                 for s in samplers)


def likelihood_solver(method: str, steps, rtol, atol) -> tuple[int | str, float, float]:
    """Check a method's likelihood settings and resolve ``steps="auto"`` to ``"adaptive"``.

    Fixed RK4 steps converged for none of the methods on digits at ``small``: ``score-sde``
    read -4.7 bits/dim at 8 steps, flow matching 0.04 bits/dim too low (docs/methods/score-sde.md).
    """
    if steps == "auto":
        steps = ADAPTIVE
    if steps != ADAPTIVE and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"{method}: likelihood_steps must be 'auto', 'adaptive' or a positive integer, got {steps!r}")
    if not (isinstance(rtol, (int, float)) and isinstance(atol, (int, float)) and rtol > 0 and atol > 0):
        raise ValueError(f"{method}: likelihood_rtol and likelihood_atol must be positive numbers")
    return steps, float(rtol), float(atol)

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def build_velocity_net(data: DataSpec, model_size: str) -> nn.Module:
    """The shared backbone for ``data`` (MLP on toy2d, U-Net on images), starting at v = 0."""
    if data.modality == "toy2d":
        net: nn.Module = MLP(data.dims, data.dims, size=model_size)
    else:
        c, h, w = data.shape
        net = UNet(c, c, (h, w), size=model_size)
    nn.init.zeros_(net.out.weight)
    nn.init.zeros_(net.out.bias)
    return net


def randn(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise from ``generator`` (which may live on another device)."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def time_grid(steps: int, t0: float = 0.0, t1: float = 1.0) -> list[float]:
    return [t0 + (t1 - t0) * k / steps for k in range(steps + 1)]


def integrate_fixed(velocity: Velocity, x: torch.Tensor, steps: int, scheme: str,
                    t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from ``t0`` to ``t1`` in ``steps`` equal steps.

    ``euler``: ``x_{k+1} = x_k + h v(x_k, t_k)`` (1 network call per step);
    ``midpoint``: ``x_{k+1} = x_k + h v(x_k + h/2 v(x_k, t_k), t_k + h/2)`` (2 calls per step).
    """
    ts = time_grid(steps, t0, t1)
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        if scheme == "euler":
            x = x + h * velocity(x, t)
        elif scheme == "midpoint":
            x_half = x + 0.5 * h * velocity(x, t)
            x = x + h * velocity(x_half, t + 0.5 * h)
        else:
            raise ValueError(f"unknown fixed-step scheme {scheme!r}")
    return x


def integrate_dopri5(velocity: Velocity, x: torch.Tensor, rtol: float, atol: float,
                     t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) (``torchdiffeq.odeint``, ``method="dopri5"``) from t0 to t1.

    The error norm is torchdiffeq's RMS over the whole batch, so the step sizes (and the
    number of network calls) depend on the batch; the host records the calls it counts.
    """
    from torchdiffeq import odeint

    ts = torch.tensor([t0, t1], dtype=torch.float32, device=x.device)
    return odeint(lambda t, y: velocity(y, t), x, ts, method="dopri5", rtol=rtol, atol=atol)[-1]


# -- likelihood -------------------------------------------------------------------------------


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per example (float64)."""
    z = z.double().flatten(1)
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi))


def exact_divergence(v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``tr(dv/dz)`` per example, one backward pass per dimension (z: (N, D), requires grad)."""
    flat_v = v.flatten(1)
    div = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for i in range(flat_v.shape[1]):
        (g,) = torch.autograd.grad(flat_v[:, i].sum(), z, retain_graph=True)
        div = div + g.flatten(1)[:, i].double()
    return div


def hutchinson_divergence(v: torch.Tensor, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``eps^T (dv/dz) eps`` per example: unbiased for ``tr(dv/dz)`` when E[eps eps^T] = I."""
    (g,) = torch.autograd.grad((v * eps).sum(), z)
    return (g * eps).flatten(1).double().sum(1)


def rademacher(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2.0 * bits - 1.0).to(device)


def ode_log_likelihood(velocity: Velocity, x: torch.Tensor, steps: int | str, trace: str,
                       generator: torch.Generator | None = None, t_end: float = 1.0,
                       rtol: float = 1e-5, atol: float = 1e-5) -> torch.Tensor:
    """log p_1(x) (nats, float64, per example) of the flow ``dz/dt = v(z, t)`` from N(0, I) at t=0.

    Instantaneous change of variables, integrated from ``t_end`` down to 0 on the augmented
    state ``(z, delta)``, ``dz/dt = v``, ``d delta/dt = div v``, ``delta(t_end) = 0``: then
    ``log p(x) = log N(z(0); 0, I) + delta(0)`` (``delta(0) = -int_0^t_end div v dt``).
    ``steps``: an integer gives that many classical RK4 steps; ``"adaptive"`` integrates with
    torchdiffeq's Dormand-Prince 5(4) at ``rtol`` / ``atol`` (the error norm covers ``z`` and
    ``delta``; the state is float64, the network sees ``x``'s dtype).
    ``trace``: ``"exact"`` (autograd Jacobian trace) or ``"hutchinson"`` (one fixed Rademacher
    vector per example, drawn from ``generator``). Runs with gradients on (the host calls
    it under ``torch.no_grad``); returns plain numbers.
    """
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    eps = rademacher(x.shape, generator, x.device) if trace == "hutchinson" else None

    def field(z: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            v = velocity(z, t)
            div = exact_divergence(v, z) if eps is None else hutchinson_divergence(v, z, eps)
        return v.detach(), div

    if steps == ADAPTIVE:
        from torchdiffeq import odeint

        def augmented(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
            v, div = field(state[0].to(x.dtype), float(t))
            return v.double(), div.double()

        ts = torch.tensor([t_end, 0.0], dtype=torch.float64, device=x.device)
        delta0 = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        # step_t: land a step on t = 0 rather than step past it and interpolate back (a step
        # beyond would evaluate the field outside the trained times)
        zs, deltas = odeint(augmented, (x.detach().double(), delta0), ts, method="dopri5", rtol=rtol, atol=atol,
                            options={"step_t": ts[1:]})
        return standard_normal_logp(zs[-1]) + deltas[-1]
    z = x.detach()
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    ts = time_grid(steps, t_end, 0.0)
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t  # negative: backwards in time
        k1, d1 = field(z, t)
        k2, d2 = field(z + 0.5 * h * k1, t + 0.5 * h)
        k3, d3 = field(z + 0.5 * h * k2, t + 0.5 * h)
        k4, d4 = field(z + h * k3, t + h)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        delta = delta + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return standard_normal_logp(z) + delta


# -- minibatch optimal transport -----------------------------------------------------------------


def minibatch_ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Reorder noise ``x0`` so that ``(x0[i], x1[i])`` is the exact minibatch OT coupling.

    Minimises ``sum_i ||x0[pi(i)] - x1[i]||^2`` over permutations (squared Euclidean cost,
    uniform marginals: for equal batch sizes the OT plan is a permutation, Birkhoff). The
    cost matrix is torch (metered); the assignment is scipy on the CPU (not metered).
    """
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x1.flatten(1), x0.flatten(1)).pow(2)  # cost[i, j]: data i to noise j
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    order = torch.empty(len(rows), dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return x0[order.to(x0.device)]
