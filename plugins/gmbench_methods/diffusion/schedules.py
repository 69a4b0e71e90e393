"""Discrete-time Gaussian noise schedules shared by the diffusion plugins.

Notation of DDPM (Ho et al. 2020, arXiv 2006.11239), with time ``t = 1..T``:
``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s`` and, by convention,
``abar_0 = 1``. Everything here is written in terms of ``abar`` at two times
``s < t`` (``s = t - 1`` for the full chain), which is what lets a sampler skip
steps: on a sub-sequence ``tau_1 < ... < tau_S`` the respaced process has
``beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}}`` (DDIM, arXiv 2010.02502,
section 4.2 and appendix C.1; iDDPM, arXiv 2102.09672, section 4) and the same
formulas apply with ``(t, s) = (tau_i, tau_{i-1})``.

Two schedules: DDPM's linear betas (section 4) and iDDPM's cosine ``abar`` (Eq. 17).
DDIM's family of reverse variances (Eq. 16) is ``ddim_sigma2``.

Coefficients are computed in float64 and only the final coefficient is cast
to the data's dtype, so ``1 - abar_t`` stays accurate at ``t = 1`` (it is
``1e-4`` for the linear schedule, where float32 would lose four digits).
"""

from __future__ import annotations

import math

import torch


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (section 4): ``beta_1 = beta_start`` ... ``beta_T = beta_end``."""
    if not (isinstance(T, int) and T >= 1):
        raise ValueError(f"T must be a positive integer, got {T!r}")
    if not (0.0 < beta_start <= beta_end < 1.0):
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_abar(t: torch.Tensor | float, T: int, s: float = 0.008) -> torch.Tensor:
    """iDDPM Eq. 17: ``abar_t = f(t) / f(0)`` with ``f(t) = cos^2((t/T + s) / (1 + s) * pi / 2)``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(torch.zeros((), dtype=torch.float64))


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """iDDPM's cosine schedule (arXiv 2102.09672, section 3.2, Eq. 17).

    ``beta_t = 1 - abar_t / abar_{t-1}`` from :func:`cosine_abar`, clipped to at most
    ``max_beta`` (the paper: 0.999, "to prevent singularities at the end of the diffusion
    process near t = T", where ``abar_T = 0``). The offset ``s = 0.008`` keeps ``beta_1``
    from being tiny. Where no beta is clipped, the schedule's ``abar`` equals Eq. 17.
    """
    if not (isinstance(T, int) and T >= 1):
        raise ValueError(f"T must be a positive integer, got {T!r}")
    if not (s > 0 and 0 < max_beta < 1):
        raise ValueError(f"need s > 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
    abar = cosine_abar(torch.arange(T + 1, dtype=torch.float64), T, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def space_timesteps(T: int, steps: int) -> torch.Tensor:
    """``steps`` timesteps evenly spaced over ``1..T``, both ends included.

    This is iDDPM's ``space_timesteps`` rule (``round(i * (T-1)/(steps-1))``,
    shifted to 1-based time): the chain starts at ``t = T``, where ``q(x_T)`` is
    closest to the ``N(0, I)`` the sampler starts from, and ends at ``t = 1``, whose
    prediction is the decoder's mean. ``steps == T`` gives every step; ``steps == 1``
    gives ``[T]``. Returns an increasing long tensor.
    """
    if not (isinstance(steps, int) and 1 <= steps <= T):
        raise ValueError(f"number of steps must be an integer in 1..{T}, got {steps!r}")
    if steps == 1:
        return torch.tensor([T], dtype=torch.long)
    frac = (T - 1) / (steps - 1)
    return torch.tensor([1 + round(i * frac) for i in range(steps)], dtype=torch.long)


def _at(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` in float64 on ``values``' device, shaped to broadcast over ``like``."""
    t = torch.as_tensor(t, dtype=torch.long).to(values.device).reshape(-1)
    return values[t].reshape(-1, *([1] * (like.ndim - 1)))


def _c(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 coefficient cast to ``like``'s dtype and device."""
    return coef.to(device=like.device, dtype=like.dtype)


class NoiseSchedule:
    """The forward process ``q`` of a discrete-time Gaussian diffusion.

    Args:
        betas: ``beta_1..beta_T`` as a 1-D tensor with values in (0, 1).

    Attributes:
        T: number of steps.
        abar: ``abar_0..abar_T`` (length ``T + 1``, ``abar[0] = 1``), float64.
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty 1-D tensor with values in (0, 1)")
        self.T = len(betas)
        self.abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        return cls(linear_betas(T, beta_start, beta_end))

    @classmethod
    def cosine(cls, T: int = 4000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """iDDPM's cosine schedule (:func:`cosine_betas`)."""
        return cls(cosine_betas(T, s, max_beta))

    @property
    def betas(self) -> torch.Tensor:
        """``beta_1..beta_T`` (index ``t - 1``)."""
        return 1 - self.abar[1:] / self.abar[:-1]

    # -- q(x_t | x_0), Eq. 4 ----------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Eq. 4 reparameterised)."""
        ab = _at(self.abar, t, x0)
        return _c(ab.sqrt(), x0) * x0 + _c((1 - ab).sqrt(), x0) * eps

    def q_moments(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_t | x_0)`` (Eq. 4)."""
        ab = _at(self.abar, t, x0)
        return _c(ab.sqrt(), x0) * x0, _c(1 - ab, x0).expand_as(x0)

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert Eq. 4 for ``x_0`` given the noise (DDPM Eq. 15, DDIM Eq. 9)."""
        ab = _at(self.abar, t, xt)
        return _c(ab.rsqrt(), xt) * xt - _c(((1 - ab) / ab).sqrt(), xt) * eps

    def predict_eps(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Invert Eq. 4 for the noise given ``x_0``."""
        ab = _at(self.abar, t, xt)
        return _c((1 - ab).rsqrt(), xt) * xt - _c((ab / (1 - ab)).sqrt(), xt) * x0

    # -- q(x_s | x_t, x_0), Eqs. 6-7 (s = t - 1) or its respaced version ---------

    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``mu~`` and variance ``beta~`` of ``q(x_s | x_t, x_0)`` for ``s < t``.

        Eq. 7 with ``beta_t`` replaced by ``beta' = 1 - abar_t / abar_s`` (equal to
        ``beta_t`` when ``s = t - 1``, the default)::

            mu~   = sqrt(abar_s) beta' / (1 - abar_t) x_0 + sqrt(1 - beta') (1 - abar_s) / (1 - abar_t) x_t
            beta~ = (1 - abar_s) / (1 - abar_t) beta'
        """
        t = torch.as_tensor(t, dtype=torch.long)
        s = t - 1 if s is None else torch.as_tensor(s, dtype=torch.long)
        ab_t, ab_s = _at(self.abar, t, x0), _at(self.abar, s, x0)
        beta = 1 - ab_t / ab_s
        coef_x0 = ab_s.sqrt() * beta / (1 - ab_t)
        coef_xt = (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t)
        var = (1 - ab_s) / (1 - ab_t) * beta
        return _c(coef_x0, x0) * x0 + _c(coef_xt, xt) * xt, _c(var, x0).expand_as(x0)

    def respaced_beta(self, t: torch.Tensor, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``beta' = 1 - abar_t / abar_s`` (float64, broadcastable over ``like``)."""
        return 1 - _at(self.abar, t, like) / _at(self.abar, s, like)

    def respaced_beta_tilde(self, t: torch.Tensor, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``beta~' = (1 - abar_s) / (1 - abar_t) beta'``, the variance of ``q(x_s|x_t,x_0)``
        (float64, broadcastable over ``like``); 0 when ``s = 0``."""
        ab_t, ab_s = _at(self.abar, t, like), _at(self.abar, s, like)
        return (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)

    def ddim_sigma2(self, t: torch.Tensor, s: torch.Tensor, eta: float, like: torch.Tensor) -> torch.Tensor:
        """DDIM's reverse variance for the step ``t -> s`` (arXiv 2010.02502, Eq. 16)::

            sigma^2(eta) = eta^2 (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)

        ``eta = 0`` is the deterministic DDIM, ``eta = 1`` is ``beta~'``: the step of Eq. 12
        is then DDPM's ancestral step with ``sigma^2 = beta~'`` (float64)."""
        return eta**2 * self.respaced_beta_tilde(t, s, like)

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """Keep ``abar`` (float64) on the device the data lives on."""
        self.abar = self.abar.to(device)
        return self
