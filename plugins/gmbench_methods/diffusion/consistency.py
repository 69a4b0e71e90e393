"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023, arXiv 2303.01469): consistency
training (CT) from data and consistency distillation (CD) of an EDM teacher trained in the
same budget.

Noise and time (section 2, EDM's variance-exploding ODE): ``x_t = x + t z``, ``z ~ N(0, I)``,
``t`` in ``[eps, T]``. A consistency model maps any point of a probability-flow trajectory to
its start, ``f(x_t, t) = x_eps``, and is parameterised so the boundary condition
``f(x, eps) = x`` holds exactly (Eq. 5 and Appendix C)::

    f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(c_in(t) x, c_noise(t))
    c_skip(t) = sigma_data^2 / ((t - eps)^2 + sigma_data^2)
    c_out(t)  = sigma_data (t - eps) / sqrt(sigma_data^2 + t^2)
    c_in(t)   = 1 / sqrt(t^2 + sigma_data^2),   c_noise(t) = ln(t) / 4

``F_theta`` is the shared backbone (MLP on toy2d, U-Net on images, ``model_size`` as ``ddpm``),
which scales its time input by 1000, so it sees ``250 ln t`` as the released code passes it.
At ``t = eps`` ``c_skip = 1`` and ``c_out = 0`` in floating point, so ``f(x, eps) = x`` exactly.

Units. The paper's constants are for images in ``[-1, 1]``: ``sigma_data = 0.5``,
``eps = 0.002``, ``T = 80``, Karras ``rho = 7``. Images use them as they are. The 2-D toys
spread ~4-6x wider (per-coordinate standard deviation 1.4-2.9), so toy2d takes
``sigma_data = 2`` and ``eps = 0.008`` (four times the paper's, and the teacher's log-normal
``P_mean`` moves by ``ln 4``) but keeps ``T = 80``: that is still 28 standard deviations of
8gaussians, so ``N(0, T^2 I)`` matches the perturbed data to 0.1% in scale, and a shorter range
is quicker to make consistent. Measured on 8gaussians (CT, sliced W2 of one-step samples; the
data's Gaussian scores 0.83): smoke, seeds 0-2, 1.09 with the paper's units, 1.24 with
everything times four (``T = 320``), 0.98 with this choice; small, seed 0, 0.73 / 0.91 / 0.64.
Each is a constructor argument (``sigma_data``, ``sigma_min``, ``sigma_max``).

Discretisation (Appendix C, Karras et al. 2022): ``t_i = (eps^(1/rho) + (i-1)/(N-1)
(T^(1/rho) - eps^(1/rho)))^rho``, ``i = 1..N``, so ``t_1 = eps`` and ``t_N = T``.

Consistency training (``mode="ct"``, Algorithm 3, loss Eq. 10): with
``n ~ U{1..N(k)-1}`` and one ``z`` shared by both points,

    L = lambda(t_n) d( f_theta(x + t_{n+1} z, t_{n+1}), f_theta-(x + t_n z, t_n) ),
    theta- <- stopgrad(mu(k) theta- + (1 - mu(k)) theta)   after each step,

``lambda = 1``, and the step-dependent schedules of Eq. 3 / Appendix C

    N(k)  = ceil( sqrt( k/K ((s1 + 1)^2 - s0^2) + s0^2 ) - 1 ) + 1
    mu(k) = exp( s0 ln(mu0) / N(k) )

with the paper's CIFAR-10 values ``s0 = 2``, ``mu0 = 0.9`` (so ``N(0) = 2``, ``mu(0) = 0.9``)
and ``N(K) = s1 + 1``. (The released code divides by ``N(k) - 1`` in ``mu``; the paper's form is
used.) ``k`` is the host's step counter (0-based) and ``K`` the number of steps the budget
pays for: at the stage's start the loss is run forward and backward once on a batch of the
budget's size under the FLOP counter, ``ADAM_EMA_OPS_PER_PARAM`` element operations per trained
parameter are added for clipping, the Adam update and the two EMA updates, and
``K = floor(allowance left / that cost)`` (``tests/test_consistency.py`` checks it within one
step of the steps the host really takes). ``k / K`` is clipped at 1. ``total_steps`` sets ``K``
by hand.

``s1`` (CPU-scale deviation): the paper's ``s1 = 150`` comes with ``K = 800k`` steps; gmbench's
CPU budgets pay for ~280 (smoke) to ~700 (small) steps, where the bootstrapped targets cannot
carry the consistency across 150 intervals: one-step samples collapse onto the data's mean.
Measured on 8gaussians (sliced W2 of one-step samples, seed 0; the data's Gaussian scores
0.83, the mean 2.86): smoke ``s1`` = 5 / 8 / 10 / 20 / 50 / 150 gave 1.43 / 1.22 / 1.22 / 2.00 /
2.51 / 2.76; small ``s1`` = 10 / 40 / 150 gave 1.01 / 2.16 / 2.74. The default ``s1 = "auto"``
is ``round(sqrt(K) / 2)`` within ``[s0, 150]`` (smoke 8, small 13, the paper's 150 from
K = 90k steps on); an integer restores the paper's schedule.

Consistency distillation (``mode="cd"``, Algorithm 2, Eq. 7), two stages:

* ``teacher`` (``teacher_share`` of the budget, 0.5 by default): an EDM denoiser (Karras et
  al. 2022, arXiv 2206.00364, their Table 1) on the same backbone, ``D_phi(x, s) =
  c_skip^EDM(s) x + c_out^EDM(s) F_phi(c_in(s) x, ln(s)/4)`` with ``c_skip^EDM = sigma_data^2 /
  (s^2 + sigma_data^2)``, ``c_out^EDM = s sigma_data / sqrt(s^2 + sigma_data^2)``, trained with
  ``lambda(s) ||D_phi(x + s z, s) - x||^2``, ``lambda(s) = (s^2 + sigma_data^2) / (s sigma_data)^2``,
  ``ln s ~ N(P_mean, P_std^2)``, ``P_mean = -1.2`` (+ ``ln 4`` on toy2d), ``P_std = 1.2``;
  an EMA of its weights is the teacher.
* ``distill`` (the rest): the consistency model starts from the teacher's weights (as the
  released code does), and with ``n ~ U{1..N-1}``, ``x_{t_{n+1}} = x + t_{n+1} z``,

      x^phi_{t_n} = one Heun step of dx/dt = (x - D_phi(x, t)) / t from t_{n+1} to t_n,
      L = d( f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x^phi_{t_n}, t_n) ),

  with fixed ``N = cd_steps = 18`` and ``mu = cd_mu = 0.95`` (the paper's CIFAR-10 CD
  values). The Heun step costs two teacher calls per example and step; they run inside
  ``training_step`` and so are metered like everything else.

``d`` (``distance``): ``"l2"``, the squared L2 of the paper's ``L_CT^N (l2)`` runs, here averaged
over dimensions (a constant factor); or ``"pseudo-huber"``, ``sqrt(||a-b||^2 + c^2) - c`` with
``c = 0.00054 sqrt(d) sigma_data / 0.5`` (from the follow-up, arXiv 2310.14189, offered as an
option). LPIPS is not used: no learned metric fits 2-D points or 8x8 digits.

Evaluation weights: an EMA of ``theta`` (``ema_decay``, the decay at step ``k`` is
``min(ema_decay, (1+k)/(10+k))`` as in ``ddpm``), standing in for the paper's 0.9999 EMA at
CPU budgets.

Samplers (Algorithm 1), images clipped to the data range after each evaluation of ``f`` (the
released code's ``clip_denoised``):

* ``onestep`` (NFE 1): ``x = f(T z, T)``;
* ``multistep`` (any NFE ``S``): times ``tau_0 = T > tau_1 > ... > tau_{S-1}``, the first ``S``
  points of the Karras grid with ``S + 1`` points from ``T`` down to ``eps`` (``rho = 7``); then
  ``x = f(T z, T)`` and, for ``i = 1..S-1``, ``x <- f(x + sqrt(tau_i^2 - eps^2) z_i, tau_i)``.
  Two steps use ``tau_1 = ((T^(1/7) + eps^(1/7)) / 2)^7`` = 2.52 on images, 3.30 on toy2d (the
  paper's searched 2-step times on ImageNet 64 map to 1.4 for CD and 1.9 for CT), or ``tau1``
  when it is set. The paper searches the times per model (ternary search on FID, CM Sec. 6);
  ``benchmarks/probe_cm_two_step.py --search`` does that search for ``tau_1`` on a toy's
  validation split, and its result is passed as ``--set consistency.tau1=...``. The search is
  not run inside a run: its samples would be unbudgeted training work.
  CD trains ``f`` only at the ``N = cd_steps`` times of its grid, so its sampler takes each
  time from that grid instead: indices ``round(i (N - 1) / S)`` counted from ``T``, never
  ``eps`` (the released code's multistep sampler also indexes its grid). Two steps are then
  2.59 on toy2d and 1.92 on images, and from ``S = N - 1`` on every inner time is used once
  (``N - 1`` calls); off-grid times, where ``f`` was never trained, made CD's multistep
  samples worse with every step (docs/methods/consistency.md);
* ``twostep``: ``multistep`` at NFE 2, a sampler of its own because the budgets' NFE grids
  start at 10, and CM T1's claim compares 2 steps with 1.

Likelihood: ``none``.

Deviations, all from CPU scale: Adam learning rates of ``ddpm`` instead of 4e-4, no dropout,
the evaluation EMA's warm-up, squared L2 instead of LPIPS, and budgets of hundreds to a few
thousand steps instead of 800k (the N(k) and mu(k) schedules are stretched over the steps
the budget pays for, as Eq. 3 does over its K).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.backbones import MLP, UNet
from gmbench.data.base import DataSpec
from gmbench.ema import ema_update
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage

MODES = ("ct", "cd")
DISTANCES = ("l2", "pseudo-huber")
SIGMA_DATA, SIGMA_MIN, SIGMA_MAX = 0.5, 0.002, 80.0  # Appendix C (EDM's values), images in [-1, 1]
# sigma_data and eps (and so the teacher's P_mean) are the paper's times this; T is kept. toy2d:
# the toys spread ~4-6x wider than images (module docstring: measured against the paper's
# values and against T four times larger too)
SIGMA_SCALE = {"image": 1.0, "toy2d": 4.0}
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal noise distribution for the teacher
# Adam learning rates of ddpm (measured there at these budgets); the paper uses 4e-4 at batch 512.
DEFAULT_LR = {"toy2d": 3e-3, "image": 1e-3}
# Element operations per trained parameter outside the loss's forward and backward: gradient
# clipping (norm, scale), Adam's moments and update, and the target and evaluation EMAs
# (one lerp each): 9.4-9.6 measured against the host (the first step allocates Adam's state).
# Used only to estimate the number of steps K.
ADAM_EMA_OPS_PER_PARAM = 10
# s1="auto": round(sqrt(K) / 2), at most the paper's 150 (reached at K = 90,000 steps)
AUTO_S1_MAX = 150
# K when there is neither a budget view nor total_steps (direct calls of training_step)
FALLBACK_STEPS = 1000


def karras_times(n: int, eps: float, T: float, rho: float) -> torch.Tensor:
    """``t_1 = eps < t_2 < ... < t_n = T`` (float64): the Karras et al. discretisation."""
    if n < 2:
        raise ValueError(f"the discretisation needs at least 2 points, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = eps ** (1 / rho), T ** (1 / rho)
    t = (lo + i / (n - 1) * (hi - lo)) ** rho
    t[0], t[-1] = eps, T  # exact ends
    return t


def ct_steps(k: int, K: int, s0: int, s1: int) -> int:
    """``N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1`` (Eq. 3), ``k/K`` clipped at 1."""
    frac = min(max(k, 0) / K, 1.0)
    return int(math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)) + 1


def ct_ema(k: int, K: int, s0: int, s1: int, mu0: float) -> float:
    """``mu(k) = exp(s0 ln(mu0) / N(k))`` (Appendix C)."""
    if mu0 == 0.0:
        return 0.0
    return math.exp(s0 * math.log(mu0) / ct_steps(k, K, s0, s1))


class ConsistencyModel(Method):
    """Consistency models: training from data (``ct``) or distillation of an EDM teacher (``cd``).

    Args:
        data: the dataset's spec (toy2d or image).
        model_size: backbone preset (MLP for toy2d, U-Net for images), as ``ddpm``.
        mode: ``"ct"`` (consistency training, one stage) or ``"cd"`` (a teacher stage, then
            consistency distillation).
        sigma_data, sigma_min, sigma_max: ``sigma_data``, ``eps`` and ``T``; None takes the
            paper's 0.5 / 0.002 / 80 on images and 2 / 0.008 / 80 on toy2d.
        rho: Karras discretisation exponent (paper: 7).
        s0, s1, mu0: the CT schedules ``N(k)``, ``mu(k)`` (paper, CIFAR-10: 2, 150, 0.9); ``s1="auto"``
            is ``round(sqrt(K) / 2)`` within ``[s0, 150]`` (see the module docstring).
        total_steps: ``K`` of the CT schedules; None estimates it from the stage's FLOP allowance.
        cd_steps, cd_mu: CD's fixed ``N`` and target EMA rate (paper, CIFAR-10: 18, 0.95).
        teacher_share: budget share of the teacher stage in ``cd`` mode.
        distance: ``"l2"`` (squared L2 averaged over dimensions) or ``"pseudo-huber"``.
        lr: Adam learning rate of every stage; None picks ``DEFAULT_LR`` for the modality.
        grad_clip: gradient-norm clipping.
        ema_decay: decay of the evaluation EMA (``min(ema_decay, (1+k)/(10+k))`` at step k);
            0 or None samples with the online weights.
        clip_denoised: clip images to the data range after each evaluation of ``f`` while sampling.
        tau1: the second time of two-step sampling (``twostep``, ``multistep`` at NFE 2), in
            ``(sigma_min, sigma_max)``; None: the Karras midpoint (CT) or the nearest CD training time.
    """

    name = "consistency"
    family = "diffusion"
    paper = "2303.01469"
    title = "Consistency Models"
    modalities = ("toy2d", "image")
    samplers = (
        SamplerInfo("onestep", adjustable_nfe=False, deterministic=True, default_nfe=1),
        SamplerInfo("twostep", adjustable_nfe=False, deterministic=False, default_nfe=2),
        SamplerInfo("multistep", adjustable_nfe=True, deterministic=False, default_nfe=2),
    )
    likelihood = "none"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        mode: str = "ct",
        sigma_data: float | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        s0: int = 2,
        s1: int | str = "auto",
        mu0: float = 0.9,
        total_steps: int | None = None,
        cd_steps: int = 18,
        cd_mu: float = 0.95,
        teacher_share: float = 0.5,
        distance: str = "l2",
        lr: float | None = None,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.9999,
        clip_denoised: bool = True,
        tau1: float | None = None,
    ) -> None:
        super().__init__(data, model_size)
        if mode not in MODES:
            raise ValueError(f"consistency: mode must be one of {MODES}, got {mode!r}")
        if distance not in DISTANCES:
            raise ValueError(f"consistency: distance must be one of {DISTANCES}, got {distance!r}")
        scale = SIGMA_SCALE[data.modality]
        self.sigma_data = SIGMA_DATA * scale if sigma_data is None else float(sigma_data)
        self.eps = SIGMA_MIN * scale if sigma_min is None else float(sigma_min)
        self.T = SIGMA_MAX if sigma_max is None else float(sigma_max)
        if not 0 < self.eps < self.T or self.sigma_data <= 0:
            raise ValueError(f"consistency: need 0 < sigma_min < sigma_max and sigma_data > 0, got "
                             f"{self.eps}, {self.T}, {self.sigma_data}")
        for what, value, low in (("s0", s0, 1), ("s1", 1 if s1 == "auto" else s1, 1), ("cd_steps", cd_steps, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                alternative = " or 'auto'" if what == "s1" else ""
                raise ValueError(f"consistency: {what} must be an integer >= {low}{alternative}, got {value!r}")
        if s1 != "auto" and s1 + 1 < s0:
            raise ValueError(f"consistency: need s1 + 1 >= s0, got s0={s0}, s1={s1}")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"consistency: total_steps must be a positive integer or None, got {total_steps!r}")
        for what, value in (("mu0", mu0), ("cd_mu", cd_mu)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"consistency: {what} must be in [0, 1), got {value!r}")
        if not 0.0 < float(teacher_share) < 1.0:
            raise ValueError(f"consistency: teacher_share must be in (0, 1), got {teacher_share!r}")
        if tau1 is not None and (isinstance(tau1, bool) or not isinstance(tau1, (int, float))
                                 or not self.eps < float(tau1) < self.T):
            raise ValueError(f"consistency: tau1 must be a number between sigma_min and sigma_max "
                             f"({self.eps:g} < tau1 < {self.T:g}) or None, got {tau1!r}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"consistency: ema_decay must be in [0, 1) or None, got {ema_decay!r}")
        self.mode, self.rho, self.distance = mode, float(rho), distance
        self.s0, self.s1, self.mu0 = s0, s1, float(mu0)
        self.cd_steps, self.cd_mu, self.teacher_share = cd_steps, float(cd_mu), float(teacher_share)
        self.total_steps = total_steps
        self.tau1 = None if tau1 is None else float(tau1)
        self.p_mean, self.p_std = P_MEAN + math.log(self.sigma_data / SIGMA_DATA), P_STD
        self.lr = DEFAULT_LR[data.modality] if lr is None else float(lr)
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay or 0.0
        self.clip_range = data.value_range if (clip_denoised and data.modality == "image") else None
        self.huber_c = 0.00054 * math.sqrt(data.dims) * self.sigma_data / SIGMA_DATA
        #: K of the CT schedules, per stage (set in on_stage_start; saved with training checkpoints)
        self.schedule_steps: dict[str, int] = {}
        #: the estimate behind K: allowance, probe cost, estimated cost per step
        self.step_estimate: dict = {}

        if data.modality == "toy2d":
            self.net: nn.Module = MLP(data.dims, data.dims, size=model_size)
        else:
            c, h, w = data.shape
            self.net = UNet(c, c, (h, w), size=model_size)
        # zero output layer (as ddpm and the released U-Net): f starts as c_skip(t) x
        nn.init.zeros_(self.net.out.weight)
        nn.init.zeros_(self.net.out.bias)
        self.target = copy.deepcopy(self.net).requires_grad_(False)  # theta-
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if self.ema_decay else None
        self.teacher = copy.deepcopy(self.net).requires_grad_(False) if mode == "cd" else None

    # -- networks -------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        # target, EMA and teacher are listed so they move with the method and are checkpointed;
        # only "net" is ever named by an optimizer.
        out = {"net": self.net, "target": self.target}
        if self.ema is not None:
            out["ema"] = self.ema
        if self.teacher is not None:
            out["teacher"] = self.teacher
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())  # the copies are not capacity

    def backbone(self) -> str:
        """``"UNet(small, 1.42M)"`` / ``"MLP(small, 0.693M)"``: the one trained network (the
        target, EMA and teacher are copies of it)."""
        from gmbench.method import backbone_label

        return backbone_label(type(self.net).__name__, self.model_size, self.num_parameters())

    def sampling_net(self) -> nn.Module:
        return self.ema if self.ema is not None else self.net

    # -- parameterisation (Appendix C) ---------------------------------------------------------

    def _col(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``c_skip(t)``, ``c_out(t)``, ``c_in(t)`` of the consistency model (boundary at ``eps``)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / ((t - self.eps) ** 2 + sd2)
        c_out = self.sigma_data * (t - self.eps) / (sd2 + t**2).sqrt()
        c_in = (t**2 + sd2).rsqrt()
        return c_skip, c_out, c_in

    def edm_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EDM's ``c_skip``, ``c_out``, ``c_in`` (Karras et al. 2022, Table 1) for the teacher."""
        sd2 = self.sigma_data**2
        return sd2 / (sigma**2 + sd2), sigma * self.sigma_data / (sigma**2 + sd2).sqrt(), (sigma**2 + sd2).rsqrt()

    def _precond(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, scalings) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in = (self._col(c, x) for c in scalings(t))
        return c_skip * x + c_out * net(c_in * x, 0.25 * t.log())

    def consistency_fn(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, ln(t)/4)`` with the weights of ``net``."""
        return self._precond(net, x, t, self.scalings)

    def denoise(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The EDM denoiser ``D(x, sigma)`` with the weights of ``net`` (the teacher)."""
        return self._precond(net, x, sigma, self.edm_scalings)

    # -- training -----------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        def opt():
            return (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),)

        if self.mode == "ct":
            return [Stage("consistency", opt())]
        return [Stage("teacher", opt(), self.teacher_share), Stage("distill", opt(), 1.0 - self.teacher_share)]

    def distance_fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``d(a, b)`` per example."""
        sq = (a - b).flatten(1).pow(2)
        if self.distance == "l2":
            return sq.mean(1)
        return (sq.sum(1) + self.huber_c**2).sqrt() - self.huber_c

    def discretisation(self, n: int) -> torch.Tensor:
        return karras_times(n, self.eps, self.T, self.rho)

    def time_at(self, i: torch.Tensor, n: int) -> torch.Tensor:
        """``t_{i+1}`` of the ``n``-point grid for 0-based indices ``i`` (float32). Computed per
        example rather than indexed from ``discretisation(n)`` so that a step costs the same
        FLOPs whatever ``N(k)`` is (the host's meter audits that)."""
        lo, hi = self.eps ** (1 / self.rho), self.T ** (1 / self.rho)
        t = (lo + i.double() / (n - 1) * (hi - lo)) ** self.rho
        t = torch.where(i == 0, self.eps, torch.where(i == n - 1, self.T, t))  # exact ends
        return t.float()

    def ct_loss(self, x: torch.Tensor, N: int) -> torch.Tensor:
        """Eq. 10 with ``lambda = 1``: one ``n ~ U{1..N-1}`` and one ``z`` per example."""
        n = torch.randint(0, N - 1, (x.shape[0],), device=x.device)  # 0-based: the pair (t_n, t_{n+1})
        z = torch.randn_like(x)
        t_lo, t_hi = self.time_at(n, N), self.time_at(n + 1, N)
        online = self.consistency_fn(self.net, x + self._col(t_hi, x) * z, t_hi)
        with torch.no_grad():
            target = self.consistency_fn(self.target, x + self._col(t_lo, x) * z, t_lo)
        return self.distance_fn(online, target).mean()

    def heun_step(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """One Heun step of the teacher's PF ODE ``dx/dt = (x - D(x, t)) / t`` from ``t`` to ``t_next``."""
        h = self._col(t_next - t, x)
        d = (x - self.denoise(self.teacher, x, t)) / self._col(t, x)
        x_euler = x + h * d
        d_next = (x_euler - self.denoise(self.teacher, x_euler, t_next)) / self._col(t_next, x)
        return x + 0.5 * h * (d + d_next)

    def cd_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 7 with ``lambda = 1`` (Algorithm 2)."""
        n = torch.randint(0, self.cd_steps - 1, (x.shape[0],), device=x.device)
        z = torch.randn_like(x)
        t_lo, t_hi = self.time_at(n, self.cd_steps), self.time_at(n + 1, self.cd_steps)
        x_hi = x + self._col(t_hi, x) * z
        online = self.consistency_fn(self.net, x_hi, t_hi)
        with torch.no_grad():
            target = self.consistency_fn(self.target, self.heun_step(x_hi, t_hi, t_lo), t_lo)
        return self.distance_fn(online, target).mean()

    def teacher_loss(self, x: torch.Tensor) -> torch.Tensor:
        """EDM's loss: ``lambda(s) ||D(x + s z, s) - x||^2``, ``ln s ~ N(P_mean, P_std^2)``."""
        sigma = (self.p_mean + self.p_std * torch.randn(x.shape[0], device=x.device)).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = self.denoise(self.net, x + self._col(sigma, x) * torch.randn_like(x), sigma)
        return (weight * (denoised - x).flatten(1).pow(2).mean(1)).mean()

    def schedule(self, stage: str, step: int) -> tuple[int, float]:
        """``(N, mu)`` used at ``step`` of ``stage``: ``(N(k), mu(k))`` for CT, fixed for CD."""
        if self.mode == "cd":
            return self.cd_steps, self.cd_mu
        K = self.schedule_steps.get(stage) or self.total_steps or FALLBACK_STEPS
        s1 = self.end_scale(K)
        return ct_steps(step, K, self.s0, s1), ct_ema(step, K, self.s0, s1, self.mu0)

    def end_scale(self, K: int) -> int:
        """``s1``: as given, or for ``"auto"`` ``round(sqrt(K) / 2)`` within ``[s0, 150]``."""
        if self.s1 != "auto":
            return self.s1
        return min(AUTO_S1_MAX, max(self.s0, round(math.sqrt(K) / 2)))

    def loss(self, stage: str, batch: torch.Tensor, step: int) -> torch.Tensor:
        if stage == "teacher":
            return self.teacher_loss(batch)
        if stage == "distill":
            return self.cd_loss(batch)
        return self.ct_loss(batch, self.schedule(stage, step)[0])

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        return {"adam": self.loss(stage, batch, step)}

    def on_stage_start(self, stage: str, train_x: torch.Tensor, generator: torch.Generator):
        if stage == "distill":  # Algorithm 2's start: theta <- phi (released code), theta- <- theta
            with torch.no_grad():
                self.teacher.load_state_dict((self.ema if self.ema is not None else self.net).state_dict())
                self.net.load_state_dict(self.teacher.state_dict())
                for copy_ in (self.target, self.ema):
                    if copy_ is not None:
                        copy_.load_state_dict(self.net.state_dict())
            return None
        if stage != "consistency":
            return None
        if self.total_steps is not None:
            self.schedule_steps[stage] = self.total_steps
        elif self.budget_view is not None:
            self.schedule_steps[stage] = self.estimate_steps(stage, train_x)
        return None

    def stage_notes(self, stage: str) -> dict:
        """The consistency stage's step estimate ``K`` (its N(k) and mu(k) schedules run over it)."""
        return dict(self.step_estimate) if stage == "consistency" and self.step_estimate else {}

    def estimate_steps(self, stage: str, train_x: torch.Tensor) -> int:
        """``K``: the steps the stage's allowance pays for, from one counted forward and backward
        of the loss at the budget's batch size plus ``ADAM_EMA_OPS_PER_PARAM`` per parameter."""
        from gmbench.flops import count_cost

        view = self.budget_view
        batch = train_x[: view.batch_size].to(self.device)  # the host's batches: min(batch_size, rows) rows

        def probe():
            self.ct_loss(batch, self.s0).backward()

        _, mode = count_cost(probe)
        for p in self.net.parameters():
            p.grad = None
        per_step = mode.total + ADAM_EMA_OPS_PER_PARAM * self.num_parameters()
        left = float(view.stage_flops[stage]) - mode.total
        K = max(1, int(left // per_step))
        self.step_estimate = {"allowance": float(view.stage_flops[stage]), "probe_flops": mode.total,
                              "flops_per_step": per_step, "steps": K}
        return K

    @torch.no_grad()
    def on_step_end(self, stage: str, step: int) -> None:
        if stage != "teacher":  # theta- <- mu theta- + (1 - mu) theta
            _, mu = self.schedule(stage, step)
            for p_t, p in zip(self.target.parameters(), self.net.parameters()):
                p_t.lerp_(p, 1.0 - mu)
        if self.ema is not None:
            ema_update(self.ema, self.net, self.ema_decay, step)

    def training_state(self) -> dict:
        return {"schedule_steps": dict(self.schedule_steps)}

    def load_training_state(self, state: dict) -> None:
        self.schedule_steps = {str(k): int(v) for k, v in (state.get("schedule_steps") or {}).items()}

    # -- sampling (Algorithm 1) -----------------------------------------------------------------

    def sample_times(self, nfe: int) -> list[float]:
        """``tau_0 = T > ... > tau_{S-1}``: the first ``S = nfe`` points of the Karras grid of
        ``S + 1`` points from ``T`` down to ``eps``; for CD those points snapped to its training
        grid (fewer than ``S`` once ``S >= cd_steps - 1``); at ``S = 2``, ``[T, tau1]`` when
        ``tau1`` is set."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise MethodError(f"consistency: nfe must be a positive integer, got {nfe!r}")
        if nfe == 2 and self.tau1 is not None:
            return [self.T, self.tau1]
        if self.mode == "cd":
            # CD trains f only at the N = cd_steps times of its grid, and between them f is whatever
            # the network interpolates (docs/methods/consistency.md: off-grid two-step samples were
            # far worse); the released code's multistep sampler takes indices into that grid too
            grid = self.discretisation(self.cd_steps).flip(0).tolist()  # T first, eps last
            last = self.cd_steps - 2  # never eps itself, where f is the identity
            index = sorted({min(math.floor(i * (self.cd_steps - 1) / nfe + 0.5), last) for i in range(nfe)})
            return [grid[k] for k in index]
        return self.discretisation(nfe + 1).flip(0)[:nfe].tolist()

    def _randn(self, shape, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device).to(self.device)

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        self.sampler(sampler)  # unknown names fail with a suggestion
        nfe = {"onestep": 1, "twostep": 2}.get(sampler, nfe)
        net = self.sampling_net()
        x = None
        for i, tau in enumerate(self.sample_times(nfe)):
            z = self._randn((n, *self.data.shape), generator)
            x_tau = tau * z if i == 0 else x + math.sqrt(tau**2 - self.eps**2) * z
            x = self.consistency_fn(net, x_tau, torch.full((n,), tau, device=self.device))
            if self.clip_range is not None:
                x = x.clamp(*self.clip_range)
        return x


@hookimpl
def gmbench_register_methods(register):
    register(ConsistencyModel)


@hookimpl
def gmbench_register_claims(register):
    """CM T1 (arXiv 2303.01469, CIFAR-10 FID): two-step samples beat one-step samples for CT
    (8.70 -> 5.83) and CD (3.55 -> 2.93), and CD beats CT at equal steps. Checked with the
    primary metrics: sliced W2 on 8gaussians, FID on digits. The CD-vs-CT claim compares runs
    at equal total training FLOPs, so CD's teacher is paid for out of the same budget (the
    paper's CD used a separately trained EDM teacher)."""
    from gmbench.claims import Cell, PaperClaim

    for label, what in (("consistency", "CT"), ("consistency[mode=cd]", "CD")):
        tag = what.lower()
        two, one = Cell(label, "twostep", 2), Cell(label, "onestep", 1)
        for metric, dataset in (("swd", "8gaussians"), ("fid", "digits")):
            register(PaperClaim(
                name=f"cm-{tag}-two-step-beats-one-step-{dataset}-{metric}", relation="better", metric=metric,
                dataset=dataset, a=two, b=one, paper="2303.01469", table="CM T1",
                statement=f"{what} consistency model: 2-step samples have lower {metric} than 1-step samples",
            ))
    for metric, dataset in (("swd", "8gaussians"), ("fid", "digits")):
        register(PaperClaim(
            name=f"cm-cd-beats-ct-one-step-{dataset}-{metric}", relation="better", metric=metric, dataset=dataset,
            a=Cell("consistency[mode=cd]", "onestep", 1), b=Cell("consistency", "onestep", 1),
            paper="2303.01469", table="CM T1",
            statement=f"at equal training FLOPs (teacher included), CD's 1-step samples have lower {metric} than CT's",
        ))
