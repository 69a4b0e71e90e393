"""Absorbing-state ("masked") discrete diffusion: schedules, masking, SUBS, the NELBO.

Shared by the masked-diffusion plugins (MDLM now; D3PM-absorbing, SEDD-absorb and
BD3-LM can reuse it). Notation and equations follow MDLM (Sahoo et al. 2024,
arXiv 2406.07524):

* Tokens are ``0..V-1``; ``[MASK]`` is the extra id ``m = V``.
* Forward process (Sec. 3.1-3.2): each token independently keeps its value with
  probability ``alpha_t`` and is replaced by ``[MASK]`` otherwise,
  ``q(z_t | x) = Cat(z_t; alpha_t x + (1 - alpha_t) m)``; ``alpha`` decreases from
  ``alpha_0 = 1`` (clean) to ``alpha_1 = 0`` (all masked).
* SUBS parameterisation (Sec. 3.2): the denoiser's distribution over ``x`` gives
  ``[MASK]`` zero probability ("zero masking") and copies unmasked tokens
  ("carry-over unmasking").
* Reverse step (Sec. 3.2: the posterior ``q(z_s | z_t, x)`` with ``x`` replaced by the
  SUBS denoiser ``x_theta``): from ``t`` to ``s < t`` a masked token becomes token ``v``
  with probability ``x_theta(v) (alpha_s - alpha_t) / (1 - alpha_t)`` and stays masked
  with probability ``(1 - alpha_s) / (1 - alpha_t)``; unmasked tokens never change.
* Rao-Blackwellised continuous-time NELBO (Eq. 10-11):
  ``E_{t ~ U[0,1]} E_q [ -alpha'_t / (1 - alpha_t) * sum_{l: z_t^l = m} -log x_theta^l(x^l) ]``,
  in nats per sequence. Substituting ``u = 1 - alpha_t`` shows it does not depend on
  the schedule's form, only on its endpoints (as the paper notes).
* Discrete-time NELBO with ``T`` steps (Eq. 8, ``t(i) = i / T``, ``s(i) = (i - 1) / T``):
  ``sum_{i=1}^T E_q [ (alpha_s - alpha_t) / (1 - alpha_t) * sum_{masked l} -log x_theta^l(x^l | z_t) ]``;
  the reconstruction and prior terms vanish since ``alpha_0 = 1`` and ``alpha_1 = 0``.
  Estimated with one uniform step ``i`` (``t = ceil(u T) / T`` for ``u`` uniform on (0, 1]),
  weighted ``T (alpha_s - alpha_t) / (1 - alpha_t)`` (:func:`discrete_weight`); it is looser
  than the continuous-time bound and tends to it as ``T`` grows (MDLM Sec. 3.2).
  Times may also be given per token (shape ``(N, L)``): BD3-LM draws one per block.
"""

from __future__ import annotations

import contextlib

import math

import torch


class NoiseSchedule:
    """``alpha_t`` on ``[0, 1]``: the probability that a token is still unmasked at ``t``."""

    name = "schedule"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def one_minus_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``1 - alpha_t``, the masking probability (override for precision near t = 0)."""
        return 1.0 - self.alpha(t)

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """``d alpha_t / dt`` (negative)."""
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """The NELBO weight ``-alpha'_t / (1 - alpha_t) > 0`` of Eq. 10, for ``t`` in (0, 1]."""
        return -self.dalpha(t) / self.one_minus_alpha(t)


class LogLinearSchedule(NoiseSchedule):
    """``alpha_t = 1 - t``: MDLM's default, "log-linear" because the total noise
    ``sigma_t = -log alpha_t = -log(1 - t)``. Its NELBO weight is ``1 / t``.

    (The MDLM code uses ``1 - (1 - eps) t`` with ``eps = 1e-3`` so that ``alpha_1 > 0``;
    here ``alpha_1 = 0`` exactly, so the sampler's all-[MASK] start is the true prior.
    The weight ``1 / t`` is finite for the times drawn, in (0, 1]; MDLM's training
    additionally floors them at ``t_min``, see :class:`.mdlm.MDLM`.)
    """

    name = "loglinear"

    def alpha(self, t):
        return 1.0 - t

    def one_minus_alpha(self, t):
        return t

    def dalpha(self, t):
        return -torch.ones_like(t)


class CosineSchedule(NoiseSchedule):
    """``alpha_t = cos(pi t / 2)`` (the MDLM code's ``CosineNoise`` with ``eps = 0``)."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def one_minus_alpha(self, t):
        return 2.0 * torch.sin(0.25 * math.pi * t) ** 2  # 1 - cos x = 2 sin^2(x/2), exact near 0

    def dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


SCHEDULES = {s.name: s for s in (LogLinearSchedule(), CosineSchedule())}


def get_schedule(schedule: str | NoiseSchedule) -> NoiseSchedule:
    """A schedule by name (``loglinear``, ``cosine``) or a :class:`NoiseSchedule` as is."""
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]


def stratified_times(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Low-discrepancy times in (0, 1]: stratified along the last dimension.

    Entry ``k`` of a row of ``K`` is uniform on ``(k / K, (k + 1) / K]``: MDLM's
    low-discrepancy sampler (from VDM, Kingma et al. 2021, arXiv 2107.00630), which
    the reference code draws as ``(u / K + k / K)`` over a batch. The interval is open
    at 0 so that the weight ``1 / t`` stays finite. ``generator=None`` uses torch's
    global RNG (training).
    """
    if generator is not None:
        u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    else:
        u = torch.rand(shape, dtype=torch.float64)
    k = torch.arange(shape[-1], dtype=torch.float64, device=u.device)
    t = (k + 1.0 - u) / shape[-1]  # 1 - u lies in (0, 1]
    return t.to(device) if device is not None else t


def snap_to_steps(t: torch.Tensor, steps: int | None) -> torch.Tensor:
    """``ceil(t T) / T``: a time uniform on (0, 1] becomes the step ``t(i) = i / T`` with ``i``
    uniform on ``1..T`` (the discrete-time NELBO's times); ``steps=None`` returns ``t`` as is."""
    if steps is None:
        return t
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.ceil(t.double() * steps).clamp(min=1) / steps


def discrete_weight(schedule: NoiseSchedule, t: torch.Tensor, steps: int) -> torch.Tensor:
    """``T (alpha_s - alpha_t) / (1 - alpha_t)`` with ``s = t - 1/T``: the weight of the
    one-step estimate of the ``T``-step NELBO (Eq. 8) at a step time ``t`` from
    :func:`snap_to_steps`. The loglinear schedule gives ``1 / t``, the continuous weight at
    the grid point."""
    t = t.double()
    s = (t - 1.0 / steps).clamp(min=0.0)
    return steps * (schedule.alpha(s) - schedule.alpha(t)) / schedule.one_minus_alpha(t)


def mask_tokens(
    x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``z_t ~ q(z_t | x)`` for each row of ``x`` (N, L) at its time ``t``: shape ``(N,)``,
    or ``(N, L)`` for one time per token (BD3-LM's per-block times).

    Returns ``(z_t, masked)`` with ``masked`` the boolean positions set to ``mask_id``.
    """
    p_mask = schedule.one_minus_alpha(t.double())
    if p_mask.dim() == 1:
        p_mask = p_mask[:, None]
    if generator is not None:
        u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=torch.float64).to(x.device)
    else:
        u = torch.rand(x.shape, dtype=torch.float64).to(x.device)
    masked = u < p_mask.to(x.device)
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterisation (Sec. 3.2): ``(N, L, V)`` logits over data tokens ->
    ``(N, L, V + 1)`` log-probabilities over data tokens and ``[MASK]``.

    Zero masking: the ``[MASK]`` column is ``-inf`` everywhere. Carry-over unmasking:
    at positions where ``z`` is not ``[MASK]`` the distribution is a point mass on ``z``.
    """
    n, length, vocab = logits.shape
    if vocab != mask_id:
        raise ValueError(f"logits have {vocab} classes but the data vocabulary is {mask_id} tokens")
    out = torch.full((n, length, vocab + 1), float("-inf"), dtype=logits.dtype, device=logits.device)
    out[..., :vocab] = torch.log_softmax(logits, dim=-1)
    unmasked = z != mask_id
    carried = torch.full_like(out[unmasked], float("-inf"))
    carried.scatter_(-1, z[unmasked][:, None], 0.0)
    out[unmasked] = carried
    return out


def masked_nelbo(
    log_probs: torch.Tensor, x: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
    steps: int | None = None,
) -> torch.Tensor:
    """One-sample estimate of the NELBO (Eq. 10-11), nats per sequence, shape ``(N,)``.

    ``weight(t) * sum over masked positions of -log x_theta(x_l | z_t)``; with SUBS the
    unmasked terms are zero anyway (carry-over), so only masked positions are summed.
    ``t`` is one time per row ``(N,)`` or per token ``(N, L)``; with ``steps`` the weight is
    the ``T``-step one (:func:`discrete_weight`, times from :func:`snap_to_steps`).
    """
    log_px = log_probs.gather(-1, x[..., None]).squeeze(-1).double()
    ce = torch.where(masked, -log_px, torch.zeros_like(log_px))
    t = t.double().to(ce.device)
    weight = schedule.weight(t) if steps is None else discrete_weight(schedule, t, steps)
    if weight.dim() == 1:
        return weight * ce.sum(-1)
    # per-token times: unmasked tokens cost nothing, whatever their (possibly infinite) weight
    return torch.where(masked, weight * ce, torch.zeros_like(ce)).sum(-1)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``probs`` (..., C), by inverse CDF in float64.

    float64 because float32 categorical sampling lowers the effective temperature,
    i.e. the token diversity, and so flatters generative perplexity (Zheng et al.
    2024, arXiv 2409.02908); rows need not be normalised.
    """
    probs = probs.double()
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1], generator=generator, device=generator.device, dtype=torch.float64)
    idx = torch.searchsorted(cdf, (u.to(probs.device) * cdf[..., -1])[..., None], right=True).squeeze(-1)
    # guard the measure-zero case u * total == total: never return a zero-probability class
    last_positive = probs.shape[-1] - 1 - (probs > 0).flip(-1).double().argmax(-1)
    return torch.minimum(idx, last_positive)


def unmask_step(
    z: torch.Tensor, probs: torch.Tensor, alpha_t: float, alpha_s: float, mask_id: int, generator: torch.Generator
) -> torch.Tensor:
    """One reverse step ``z_t -> z_s``, ``s < t`` (the SUBS reverse posterior, Sec. 3.2).

    ``probs`` (N, L, V + 1) is the SUBS denoiser distribution ``x_theta(z_t)``. A masked
    token becomes ``v`` with probability ``probs_v (alpha_s - alpha_t) / (1 - alpha_t)``
    or stays masked with probability ``(1 - alpha_s) / (1 - alpha_t)``; unmasked tokens
    are carried over. One float64 uniform is drawn per position whatever is masked,
    so the random stream does not depend on the model's predictions.
    """
    step = probs.double() * (alpha_s - alpha_t)
    step[..., mask_id] = 1.0 - alpha_s
    draw = sample_categorical(step, generator)
    return torch.where(z == mask_id, draw, z)


@contextlib.contextmanager
def inference(net: torch.nn.Module):
    """``net`` in eval mode under ``torch.no_grad()``, its training mode restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was_training)
