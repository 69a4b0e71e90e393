"""The three SDEs of Score SDE (Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021,
arXiv 2011.13456), their marginals, reverse-time discretisations and probability-flow drift.

A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, 1]`` (Eq. 5) with an affine drift,
so its perturbation kernel is Gaussian, ``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)``
(``m`` = ``mean_coef``, ``s`` = ``std``; Appendix B, Eqs. 29 and 33):

* VE (Eq. 9 / 30): ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``f = 0``,
  ``g(t) = sqrt(d sigma(t)^2 / dt) = sigma(t) sqrt(2 log(sigma_max / sigma_min))``;
  ``m = 1``, ``s(t) = sigma(t)``, the released code's kernel: that of the SDE started at the
  data smoothed by ``N(0, sigma_min^2 I)`` (SMLD's smallest noise level), so ``p_0`` is that
  smoothed law. The paper's Eq. 29 gives the kernel of the SDE started at the data itself,
  ``s(t)^2 = sigma(t)^2 - sigma_min^2``; with it ``s(t) -> 0`` while ``g(t) -> sigma_min
  sqrt(2 log(sigma_max / sigma_min))`` as ``t -> 0``, so the probability-flow drift
  ``g^2 eps_theta / (2 s)`` grows like ``t^{-1/2}`` there (measured: torchdiffeq's dopri5
  shrank its step to zero near ``t = 1e-5``). Prior ``N(0, sigma_max^2 I)``.
* VP (Eq. 11 / 32): ``beta(t) = beta_min + t (beta_max - beta_min)``, ``f = -beta(t) x / 2``,
  ``g = sqrt(beta(t))``; with ``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``:
  ``m = exp(-B / 2)``, ``s^2 = 1 - exp(-B)``. Prior ``N(0, I)``.
* sub-VP (Eq. 12 / 33): the VP drift, ``g = sqrt(beta(t) (1 - exp(-2 B(t))))``;
  ``m = exp(-B / 2)``, ``s = 1 - exp(-B)`` (the standard deviation, not the variance: it is
  below VP's at every t). Prior ``N(0, I)``.

Reverse time (Eq. 6): ``dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar``; the
probability-flow ODE (Eq. 13): ``dx/dt = f(x, t) - g(t)^2 grad log p_t(x) / 2``.

Reverse-diffusion predictor (Eq. 46-47, Appendix E): the forward process is discretised as
``x_t = x_s + f_{s->t}(x_s) + G_{s->t} z`` between grid times ``s < t``, and the reverse step is
``x_s = x_t - f_{s->t}(x_t) + G^2 score(x_t, t) + G z``. The discretisation per SDE (as the
released code's ``discretize``):

* VE, SMLD's chain (Eq. 10): ``f = 0``, ``G^2 = sigma(t)^2 - sigma(s)^2``;
* VP, DDPM's chain (Eq. 8), respaced exactly for the grid: ``beta_{s->t} = 1 - m(t)^2 / m(s)^2``,
  ``f = (sqrt(1 - beta) - 1) x``, ``G^2 = beta``. The released code takes
  ``beta = beta(t) / N`` on its own fixed grid, which passes 1 (and gives NaN) for ``N < 20``
  steps; the exact ratio equals it to first order and stays in (0, 1) at any step count;
* sub-VP has no discrete chain: Euler-Maruyama, ``f = f(x, t) (t - s)``, ``G^2 = g(t)^2 (t - s)``
  (the code's default ``discretize``).

The Langevin corrector of VP-type SDEs scales its step by ``alpha = 1 - beta_{s->t}``
(Algorithm 5); VE uses ``alpha = 1`` (Algorithm 4).

Coefficients are computed in float64 from times given as floats or float tensors and
returned as float64 tensors; callers cast them to the data's dtype.
"""

from __future__ import annotations

import math

import torch

SDE_NAMES = ("ve", "vp", "subvp")


def _t(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 coefficient (scalar or one per example) shaped and cast to broadcast over ``like``."""
    coef = torch.as_tensor(coef, dtype=torch.float64)
    if coef.ndim > 0:
        coef = coef.reshape(-1, *([1] * (like.ndim - 1)))
    return coef.to(device=like.device, dtype=like.dtype)


class SDE:
    """A forward SDE on ``t in [0, 1]`` with a Gaussian perturbation kernel (see module doc)."""

    name: str

    def mean_coef(self, t) -> torch.Tensor:
        """``m(t)``: the mean of ``x_t`` given ``x_0`` is ``m(t) x_0``."""
        raise NotImplementedError

    def std(self, t) -> torch.Tensor:
        """``s(t)``: the standard deviation of ``x_t`` given ``x_0`` (per dimension)."""
        raise NotImplementedError

    def diffusion(self, t) -> torch.Tensor:
        """``g(t)``."""
        raise NotImplementedError

    def drift_coef(self, t) -> torch.Tensor:
        """``c(t)`` with ``f(x, t) = c(t) x`` (all three drifts are linear in x)."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std^2 I)`` the samplers start from."""
        raise NotImplementedError

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return bcast(self.drift_coef(t), x) * x

    def perturb(self, x0: torch.Tensor, t, z: torch.Tensor) -> torch.Tensor:
        """``x_t = m(t) x_0 + s(t) z`` (a draw of the perturbation kernel)."""
        return bcast(self.mean_coef(t), x0) * x0 + bcast(self.std(t), x0) * z

    def discretize(self, x: torch.Tensor, t: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, G^2)`` of the forward step ``s -> t`` (``s < t``): ``x_t = x_s + f + G z``."""
        dt = float(t) - float(s)
        return self.drift(x, t) * dt, self.diffusion(t) ** 2 * dt  # Euler-Maruyama

    def corrector_alpha(self, t: float, s: float) -> float:
        """``alpha`` of the Langevin corrector at level ``s`` reached from ``t`` (Algorithms 4-5)."""
        return 1.0

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per example (float64)."""
        z = z.double().flatten(1)
        v = self.prior_std**2
        return -0.5 * (z.pow(2).sum(1) / v + z.shape[1] * math.log(2 * math.pi * v))


class VESDE(SDE):
    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t) -> torch.Tensor:
        return self.sigma_min * torch.exp(_t(t) * self.log_ratio)

    def mean_coef(self, t) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def std(self, t) -> torch.Tensor:
        return self.sigma(t)

    def diffusion(self, t) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)

    def drift_coef(self, t) -> torch.Tensor:
        return torch.zeros_like(_t(t))

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def discretize(self, x, t, s):
        # SMLD: x_t = x_s + sqrt(sigma(t)^2 - sigma(s)^2) z
        return torch.zeros_like(x), self.sigma(t) ** 2 - self.sigma(s) ** 2


class VPSDE(SDE):
    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + _t(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t) -> torch.Tensor:
        """``B(t) = int_0^t beta(r) dr``."""
        t = _t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def mean_coef(self, t) -> torch.Tensor:
        return torch.exp(-0.5 * self.integral_beta(t))

    def std(self, t) -> torch.Tensor:
        return (-torch.expm1(-self.integral_beta(t))).sqrt()

    def diffusion(self, t) -> torch.Tensor:
        return self.beta(t).sqrt()

    def drift_coef(self, t) -> torch.Tensor:
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    def step_beta(self, t, s) -> torch.Tensor:
        """``beta_{s->t} = 1 - m(t)^2 / m(s)^2 = 1 - exp(-(B(t) - B(s)))``."""
        return -torch.expm1(-(self.integral_beta(t) - self.integral_beta(s)))

    def discretize(self, x, t, s):
        # DDPM: x_t = sqrt(1 - beta) x_s + sqrt(beta) z, i.e. f = (sqrt(1 - beta) - 1) x
        beta = self.step_beta(t, s)
        return bcast((1 - beta).sqrt() - 1, x) * x, beta

    def corrector_alpha(self, t, s) -> float:
        return float(1 - self.step_beta(t, s))


class SubVPSDE(VPSDE):
    name = "subvp"

    def std(self, t) -> torch.Tensor:
        return -torch.expm1(-self.integral_beta(t))

    def diffusion(self, t) -> torch.Tensor:
        return (self.beta(t) * -torch.expm1(-2 * self.integral_beta(t))).sqrt()

    def discretize(self, x, t, s):
        return SDE.discretize(self, x, t, s)  # Euler-Maruyama: no discrete chain of its own


def make_sde(name: str, sigma_min: float, sigma_max: float, beta_min: float, beta_max: float) -> SDE:
    if name == "ve":
        return VESDE(sigma_min, sigma_max)
    if name == "vp":
        return VPSDE(beta_min, beta_max)
    if name == "subvp":
        return SubVPSDE(beta_min, beta_max)
    raise ValueError(f"sde must be one of {SDE_NAMES}, got {name!r}")
