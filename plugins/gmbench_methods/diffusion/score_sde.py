"""Score SDE: Score-Based Generative Modeling through Stochastic Differential Equations
(Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021, arXiv 2011.13456).

Forward process: one of the three SDEs of the paper (``sde=``, see ``sde.py`` for every
formula): ``"ve"`` (Eq. 9, SMLD's continuum), ``"vp"`` (Eq. 11, DDPM's continuum) or
``"subvp"`` (Eq. 12), each with a Gaussian perturbation kernel
``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)``. The default is VP: at the ``smoke`` budget (seed 0)
it reached FID 110 / 74 on digits with 10 reverse-diffusion / ODE steps where VE reached
469 / 378 (VE's prior is ``N(0, 16^2 I)`` there, and a few steps from it land far from the
data), and sliced W2 0.32 against 0.66 on 8gaussians at 10 steps (docs/methods/score-sde.md);
the REFERENCES' Table 1 row is the VP model too.

Score model: ``s_theta(x, t) = -eps_theta(x, t) / s(t)``, with ``eps_theta`` the shared
backbone (MLP on toy2d, U-Net on images, output layer zeroed so training starts from
``s_theta = 0``) that sees ``t in [0, 1]`` directly. This is the released code's
parameterisation for both families: its continuous VP models return
``-model(x, t) / std``, its VE models (NCSN++ with ``scale_by_sigma``) ``model(x, t) / sigma``;
it conditions VE models on ``log sigma(t)``, an affine function of ``t``.

Training (Eq. 7, continuous time): ``t ~ U[train_eps, 1]`` (``train_eps = 1e-5``, the code's),
``z ~ N(0, I)``, ``x_t = m(t) x_0 + s(t) z`` and denoising score matching with
``lambda(t) = s(t)^2`` (the paper's choice when likelihood weighting is off)::

    L = E_t E || s(t) s_theta(x_t, t) + z ||^2 = E || lambda(t)^{1/2} (s_theta(x_t, t) - grad log p_0t(x_t | x_0)) ||^2

with ``grad log p_0t(x_t | x_0) = -z / s(t)``, averaged over dimensions (the code's
``reduce_mean=True``, which its VP configs use; a constant factor otherwise).

Samplers, on the grid ``t_k = 1 - k (1 - eps) / N``, ``k = 0..N`` (``eps`` = ``sampling_eps``:
1e-5 for VE, 1e-3 for VP and sub-VP, the code's), from ``x ~ N(0, prior_std^2 I)`` at ``t = 1``,
``N`` = the NFE the host asks for:

* ``reverse-diffusion``: the reverse-diffusion predictor (Eq. 46-47): for ``k = 0..N-1``,
  ``x <- x - f_k(x) + G_k^2 s_theta(x, t_k) + G_k z`` with the SDE's own discretisation
  between ``t_{k+1} < t_k`` (VE: SMLD's chain; VP: DDPM's chain respaced to the grid;
  sub-VP: Euler-Maruyama, which it equals for a step of the plain reverse SDE). One
  network call per step. The last step (to ``eps``) adds no noise; unlike the released
  code's ``noise_removal`` there is no further noise-free step at ``eps`` itself, so samples keep
  noise of about ``s(eps)`` (docs/methods/score-sde.md, Deviations).
* ``pc``: predictor-corrector (Algorithms 1-3): one Langevin corrector step at ``t_k`` and then
  the reverse-diffusion step ``t_k -> t_{k+1}``, for ``k = 0..N-1`` (the released code's order;
  Algorithms 2-3 put the corrector after the predictor at the new level, which would end the
  chain on a corrector step). The corrector step (Algorithms 4-5):
  ``z ~ N(0, I)``, ``g = s_theta(x, t_k)``, ``e = 2 alpha (r ||z|| / ||g||)^2``,
  ``x <- x + e g + sqrt(2 e) z`` with the signal-to-noise ratio ``r = snr`` (0.16, the
  released configs' default) and ``alpha = 1`` (VE) or ``1 - beta_k`` of the step (VP, sub-VP).
  ``corrector_norm="batch"`` (default): ``||z||`` and ``||g||`` are the batch means of the
  per-example norms, as the released code computes them (one step size per batch, so a
  sample depends on the batch it is drawn with; the host draws all evaluation samples in one
  call). ``"example"``: per example, as the algorithm reads for a single ``x``; in 2-D the
  ratio of two norms of one draw is heavy-tailed (``||g||`` near 0 close to a mode) and the
  step blew up: sliced W2 15 instead of 0.56 on 8gaussians at 10 PC steps (VE, ``smoke``).
  ``calls_per_step = 2``: NFE
  ``N`` is ``N`` predictor and ``N`` corrector calls, as the paper's "PC1000" is 1000 of each.
  As for ``reverse-diffusion``, the last predictor step adds no noise.
* ``corrector``: corrector only (the paper's "C2000" row): the Langevin step above once at
  each level ``t_1, ..., t_N`` from the prior, no predictor; one call per level; the last step
  adds no noise. Expected to be poor (Score SDE Table 1: FID 19-20 against 3-5 for the
  predictors).
* ``ode``: the probability-flow ODE (Eq. 13) ``dx/dt = f(x, t) - g(t)^2 s_theta(x, t) / 2``
  from ``t = 1`` to ``eps`` with N fixed Euler steps through ``torchdiffeq.odeint``
  (``method="euler"``; one call per step). The paper's "probability flow" P1000 row discretises
  the same ODE with the reverse-diffusion update (``probability_flow=True``); the two agree to
  first order in the step. Deterministic given the initial noise; no denoising step at ``eps``.
* ``ode-adaptive``: the same ODE with torchdiffeq's Dormand-Prince 5(4) (``dopri5``),
  ``rtol = atol = 1e-5`` (the paper integrates with scipy's RK45 at those tolerances, §4.3);
  the host records the calls it counts.

Images are clamped to the data range at the end only.

Likelihood (§4.3, Appendix D.2): the instantaneous change of variables along the
probability-flow ODE, ``log p_0(x) = log p_1(z(1)) + int_eps^1 div f~(x(t), t) dt`` with
``x(eps) = x`` (``eps = train_eps``, the code's likelihood ``eps``) and ``p_1`` the prior,
through ``flow_matching.ode.ode_log_likelihood`` with torchdiffeq's Dormand-Prince 5(4)
(``likelihood_steps="auto"`` = ``"adaptive"``, ``rtol = atol = likelihood_rtol / _atol``;
an integer gives that many fixed RK4 steps instead). Fixed steps are not enough here: the VP
flow is stiff near ``t = eps``, where the score of data on a quantisation grid is sharp, and 8
RK4 steps (flow matching's image default, whose straight paths converge there) left the
published ``small`` digits records at -4.7 bits/dim, an impossible value for a discrete
likelihood (docs/claims_small.md). That helper
integrates a flow from ``N(0, I)`` at time 0, so the ODE is run in reversed time
``u = 1 - t`` and, for VE, in coordinates scaled by ``1 / sigma_max`` (then
``- D log sigma_max``). On toy2d the divergence is the exact Jacobian trace (label
``"exact"``: the flow's density up to the solver's tolerance); on images Hutchinson's estimate with one
Rademacher vector per example (label ``"estimate"``, unbiased). The host hands in uniformly
dequantised pixels and converts to bits/dim of the discrete data (``gmbench.metrics.likelihood``);
``dequantize=True`` trains on dequantised pixels too (off by default, as the released
configs' ``uniform_dequantization=False``). Deviation: the paper uses RK45 at ``rtol = atol =
1e-5``; the default here is 1e-4 (``ode.DEFAULT_LIKELIHOOD_TOL``), measured against tighter tolerances in
docs/methods/score-sde.md (``benchmarks/probe_ode_likelihood_steps.py``).

Defaults for VE (``sde="ve"``): ``sigma_min = 0.01`` and ``sigma_max`` from the data, as the paper's
CIFAR-10 settings relative to their data range [0, 1] (0.01 and 50, with 50 about the
largest distance between training images, NCSNv2's technique 1, arXiv 2006.09011): toy2d
``sigma_max = 10`` (the embedded toys' largest pairwise distances are 7-11.2), images
``sigma_min = 0.01 (hi - lo)``, ``sigma_max = (hi - lo) sqrt(D)``, the diameter of the data cube
(16 on 8x8 digits in [-1, 1], whose largest pairwise distance is 9.5; 55 for CIFAR-10 in
[0, 1], near the paper's 50). VP and sub-VP: ``beta_min = 0.1``, ``beta_max = 20`` (paper).
Optimisation as ``ddpm`` at these budgets (Adam, learning rate 3e-3 on toy2d and 1e-3 on
images, clipping at 1, EMA 0.9999 with the warm-up ``min(decay, (1 + k) / (10 + k))``); the
paper uses 2e-4 with 5000 warm-up steps for 1.3M steps.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.data.base import DataSpec
from gmbench.ema import ema_update
from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage

from ..flow_matching import ode
from .sde import SDE_NAMES, SDE, bcast, make_sde

DEFAULT_LR = {"toy2d": 3e-3, "image": 1e-3}
TOY_SIGMA_MAX = 10.0
SAMPLING_EPS = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}
CORRECTOR_NORMS = ("batch", "example")
SAMPLERS = ("reverse-diffusion", "pc", "corrector", "ode", "ode-adaptive")


class ScoreSDE(Method):
    """Continuous-time score model on a VE, VP or sub-VP SDE with PC, corrector and ODE samplers.

    Args:
        data: the dataset's spec (toy2d or image).
        model_size: backbone preset (MLP for toy2d, U-Net for images).
        sde: ``"vp"`` (default), ``"ve"`` or ``"subvp"``.
        sigma_min, sigma_max: VE noise range; None picks the defaults of the module doc.
        beta_min, beta_max: VP / sub-VP ``beta(t)`` range (paper: 0.1, 20).
        train_eps: smallest training time (and the likelihood's start), 1e-5.
        sampling_eps: where the samplers stop; None: 1e-5 (VE), 1e-3 (VP, sub-VP).
        snr: the Langevin corrector's signal-to-noise ratio ``r`` (0.16).
        lr: Adam learning rate; None picks ``DEFAULT_LR`` for the modality.
        grad_clip: gradient-norm clipping (the code clips at 1).
        ema_decay: EMA of the weights used for sampling and likelihood; 0 or None: off.
        ode_rtol, ode_atol: tolerances of ``ode-adaptive``.
        likelihood_steps: RK4 steps of the likelihood ODE, ``"adaptive"`` (dopri5 at
            ``likelihood_rtol`` / ``likelihood_atol``) or ``"auto"`` (adaptive).
        likelihood_rtol, likelihood_atol: tolerances of the adaptive likelihood ODE.
        dequantize: train on uniformly dequantised pixels (images).
    """

    name = "score-sde"
    family = "diffusion"
    paper = "2011.13456"
    title = "Score-Based Generative Modeling through Stochastic Differential Equations"
    modalities = ("toy2d", "image")
    samplers = (
        SamplerInfo("reverse-diffusion", adjustable_nfe=True, deterministic=False, default_nfe=1000),
        SamplerInfo("pc", adjustable_nfe=True, deterministic=False, default_nfe=1000, calls_per_step=2.0),
        SamplerInfo("corrector", adjustable_nfe=True, deterministic=False, default_nfe=2000),
        SamplerInfo("ode", adjustable_nfe=True, deterministic=True, default_nfe=1000),
        # default_nfe only orders it after the fixed-step settings; its counted NFE is recorded.
        # An instance adds its tolerances (ode_rtol, ode_atol) to the params: the record states them.
        SamplerInfo("ode-adaptive", adjustable_nfe=False, deterministic=True, default_nfe=100, adaptive=True,
                    params={"method": "dopri5"}),
    )
    # The class states the toy2d label (an exact trace); an image instance sets "estimate".
    likelihood = "exact"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        sde: str = "vp",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        train_eps: float = 1e-5,
        sampling_eps: float | None = None,
        snr: float = 0.16,
        corrector_norm: str = "batch",
        lr: float | None = None,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.9999,
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
        likelihood_steps: int | str = "auto",
        likelihood_rtol: float = ode.DEFAULT_LIKELIHOOD_TOL,
        likelihood_atol: float = ode.DEFAULT_LIKELIHOOD_TOL,
        dequantize: bool = False,
    ) -> None:
        super().__init__(data, model_size)
        if sde not in SDE_NAMES:
            raise ValueError(f"score-sde: sde must be one of {SDE_NAMES}, got {sde!r}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"score-sde: ema_decay must be in [0, 1) or None, got {ema_decay!r}")
        likelihood_steps, likelihood_rtol, likelihood_atol = ode.likelihood_solver(
            "score-sde", likelihood_steps, likelihood_rtol, likelihood_atol)
        if not 0.0 < float(train_eps) < 1.0:
            raise ValueError(f"score-sde: train_eps must be in (0, 1), got {train_eps!r}")
        sampling_eps = SAMPLING_EPS[sde] if sampling_eps is None else float(sampling_eps)
        if not 0.0 < sampling_eps < 1.0:
            raise ValueError(f"score-sde: sampling_eps must be in (0, 1), got {sampling_eps!r}")
        if corrector_norm not in CORRECTOR_NORMS:
            raise ValueError(f"score-sde: corrector_norm must be one of {CORRECTOR_NORMS}, got {corrector_norm!r}")
        if not snr > 0:
            raise ValueError(f"score-sde: snr must be positive, got {snr!r}")
        if not (ode_rtol > 0 and ode_atol > 0):
            raise ValueError("score-sde: ode_rtol and ode_atol must be positive")

        width = None
        if data.modality == "image" and data.value_range is not None:
            width = data.value_range[1] - data.value_range[0]
        if sigma_min is None:
            sigma_min = 0.01 * (width or 1.0)
        if sigma_max is None:
            sigma_max = width * math.sqrt(data.dims) if width else TOY_SIGMA_MAX
        self.sde_name = sde
        self.sde: SDE = make_sde(sde, float(sigma_min), float(sigma_max), float(beta_min), float(beta_max))
        self.train_eps, self.sampling_eps, self.snr = float(train_eps), sampling_eps, float(snr)
        self.corrector_norm = corrector_norm
        self.lr = DEFAULT_LR[data.modality] if lr is None else float(lr)
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay or 0.0
        self.rtol, self.atol = float(ode_rtol), float(ode_atol)
        self.samplers = ode.with_tolerances(type(self).samplers, "ode-adaptive", self.rtol, self.atol)
        self.likelihood_steps = likelihood_steps
        self.likelihood_rtol, self.likelihood_atol = likelihood_rtol, likelihood_atol
        self.trace = "exact" if data.modality == "toy2d" else "hutchinson"
        self.likelihood = "exact" if self.trace == "exact" else "estimate"
        self.clip_range = data.value_range if data.modality == "image" else None
        self.bin_width = None
        if dequantize and data.modality == "image" and data.levels and data.value_range:
            self.bin_width = width / (data.levels - 1)

        self.net: nn.Module = ode.build_velocity_net(data, model_size)  # eps_theta, starting at 0
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if self.ema_decay else None

    # -- networks ---------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, **({"ema": self.ema} if self.ema is not None else {})}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())  # the EMA shadow is not capacity

    def backbone(self) -> str:
        from gmbench.method import backbone_label

        return backbone_label(type(self.net).__name__, self.model_size, self.num_parameters())

    def denoiser(self) -> nn.Module:
        """The network used for sampling and likelihood (the EMA weights when enabled)."""
        return self.ema if self.ema is not None else self.net

    def score(self, net: nn.Module, x: torch.Tensor, t) -> torch.Tensor:
        """``s_theta(x, t) = -eps_theta(x, t) / s(t)``; ``t`` a float or one time per example."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return -net(x, t.to(device=x.device, dtype=torch.float32)) / bcast(self.sde.std(t), x)

    # -- training: denoising score matching, lambda(t) = s(t)^2 (Eq. 7) ----------------------

    def stages(self) -> list[Stage]:
        return [Stage("score", (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),))]

    def dsm_loss(self, net: nn.Module, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``lambda(t) ||s_theta(x_t, t) - grad log p_0t(x_t | x_0)||^2`` per example, mean over dimensions."""
        xt = self.sde.perturb(x0, t, z)
        std = bcast(self.sde.std(t), x0)
        target = -z / std  # grad_x log N(x_t; m x_0, s^2 I)
        return (std**2 * (self.score(net, xt, t) - target).pow(2)).flatten(1).mean(1)

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        if self.bin_width is not None:
            batch = batch + (torch.rand_like(batch) - 0.5) * self.bin_width
        t = self.train_eps + (1 - self.train_eps) * torch.rand(batch.shape[0], device=batch.device, dtype=torch.float64)
        z = torch.randn_like(batch)
        return {"adam": self.dsm_loss(self.net, batch, t, z).mean()}

    @torch.no_grad()
    def on_step_end(self, stage: str, step: int) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.net, self.ema_decay, step)

    # -- sampling ---------------------------------------------------------------------------

    def time_grid(self, steps: int) -> list[float]:
        """``t_k = 1 - k (1 - eps) / N``, ``k = 0..N``, from the prior to ``sampling_eps``."""
        return [1.0 - k * (1.0 - self.sampling_eps) / steps for k in range(steps + 1)]

    def pf_drift(self, net: nn.Module, x: torch.Tensor, t) -> torch.Tensor:
        """The probability-flow ODE's drift ``f(x, t) - g(t)^2 s_theta(x, t) / 2`` (Eq. 13)."""
        return self.sde.drift(x, t) - 0.5 * bcast(self.sde.diffusion(t) ** 2, x) * self.score(net, x, t)

    def reverse_diffusion_step(self, net, x, t: float, s: float, generator, add_noise: bool = True):
        """One reverse-diffusion predictor step from ``t`` to ``s < t`` (Eq. 46)."""
        f, g2 = self.sde.discretize(x, t, s)
        x = x - f + bcast(g2, x) * self.score(net, x, t)
        if add_noise:
            x = x + bcast(g2.sqrt(), x) * ode.randn(x.shape, generator, x.device)
        return x

    def langevin_step(self, net, x, t: float, alpha: float, generator, add_noise: bool = True):
        """One Langevin corrector step at level ``t`` with the signal-to-noise step rule (Algorithms 4-5)."""
        z = ode.randn(x.shape, generator, x.device)
        g = self.score(net, x, t)
        z_norm, g_norm = z.flatten(1).norm(dim=1), g.flatten(1).norm(dim=1)
        if self.corrector_norm == "batch":  # the released code: one step size for the batch
            z_norm, g_norm = z_norm.mean(), g_norm.mean()
        step = bcast(2 * alpha * (self.snr * z_norm / g_norm.clamp_min(1e-30)) ** 2, x)
        x = x + step * g
        return x + (2 * step).sqrt() * z if add_noise else x

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        self.checked_sampler(sampler, nfe)  # unknown names and bad nfe fail clearly
        net = self.denoiser()
        x = self.sde.prior_std * ode.randn((n, *self.data.shape), generator, self.device)  # x(1) ~ prior
        if sampler in ("ode", "ode-adaptive"):
            from torchdiffeq import odeint

            def field(t, y):
                return self.pf_drift(net, y, float(t))

            if sampler == "ode":
                ts = torch.tensor(self.time_grid(nfe), dtype=torch.float32, device=self.device)
                x = odeint(field, x, ts, method="euler")[-1]
            else:
                ts = torch.tensor([1.0, self.sampling_eps], dtype=torch.float32, device=self.device)
                # step_t: the solver steps onto t = eps instead of past it (a step beyond it would
                # evaluate the score at t < 0, where the VP kernel's variance is negative)
                x = odeint(field, x, ts, method="dopri5", rtol=self.rtol, atol=self.atol,
                           options={"step_t": ts[1:]})[-1]
        else:
            ts = self.time_grid(nfe)
            for k, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
                last = k == nfe - 1  # the last update adds no noise (the code's noise removal)
                if sampler == "pc":  # corrector at t_k, then the predictor t_k -> t_{k+1} (the code's order)
                    x = self.langevin_step(net, x, t, self.sde.corrector_alpha(t, s), generator)
                if sampler in ("reverse-diffusion", "pc"):
                    x = self.reverse_diffusion_step(net, x, t, s, generator, add_noise=not last)
                if sampler == "corrector":  # Langevin at t_{k+1}: the last level is eps
                    x = self.langevin_step(net, x, s, self.sde.corrector_alpha(t, s), generator, add_noise=not last)
        if self.clip_range is not None:
            x = x.clamp(*self.clip_range)
        return x

    # -- likelihood: the probability-flow ODE's change of variables ---------------------------

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.checked_input(x)
        net, c = self.denoiser(), self.sde.prior_std

        # ode_log_likelihood integrates dz/du = v(z, u) from N(0, I) at u = 0 to the data at
        # u = t_end: here u = 1 - t and z = x / c, so v(z, u) = -f~(c z, 1 - u) / c.
        def velocity(z: torch.Tensor, u: float) -> torch.Tensor:
            return -self.pf_drift(net, c * z, 1.0 - float(u)) / c

        ll = ode.ode_log_likelihood(velocity, x / c, self.likelihood_steps, self.trace, generator,
                                    t_end=1.0 - self.train_eps, rtol=self.likelihood_rtol,
                                    atol=self.likelihood_atol)
        return (ll - self.data.dims * math.log(c)).to(torch.float32)


@hookimpl
def gmbench_register_methods(register):
    register(ScoreSDE)


@hookimpl
def gmbench_register_claims(register):
    """Score SDE T1 (arXiv 2011.13456): predictor-corrector sampling beats the predictor alone
    at the same number of predictor steps (PC1000 against P1000), and the corrector alone is
    poor: worse than the predictor at the same number of network calls (C2000 against P2000)
    and than PC at the same calls (C2000 against PC1000, i.e. corrector at 2N against PC at N,
    checked where the grid holds both: 10/20 and 50/100, the ``small`` grid and larger).
    Sliced W2 on every toy2d set, FID on digits, the default (VP) model; the paper's Table 1
    shows the ordering for both (VP: P1000 3.21, PC1000 3.18, C2000 19.06 FID; VE: 4.79, 3.21,
    20.43)."""
    from gmbench.claims import Cell, PaperClaim

    pc, pred, corr = Cell("score-sde", "pc"), Cell("score-sde", "reverse-diffusion"), Cell("score-sde", "corrector")
    for metric, dataset in (("swd", "modality:toy2d"), ("fid", "digits")):
        where = "toy2d" if dataset.startswith("modality:") else dataset
        for nfe in (10, 50):
            register(PaperClaim(
                name=f"score-sde-pc-beats-predictor-{where}-{metric}-{nfe}", relation="better", metric=metric,
                dataset=dataset, a=pc.at(nfe), b=pred.at(nfe), paper="2011.13456", table="Score SDE T1",
                statement=f"predictor-corrector sampling has lower {metric} than the reverse-diffusion predictor alone "
                          f"at {nfe} predictor steps",
            ))
            register(PaperClaim(
                name=f"score-sde-predictor-beats-corrector-{where}-{metric}-{nfe}", relation="better", metric=metric,
                dataset=dataset, a=pred.at(nfe), b=corr.at(nfe), paper="2011.13456", table="Score SDE T1",
                statement=f"the corrector alone has higher {metric} than the reverse-diffusion predictor at {nfe} "
                          "network calls",
            ))
            register(PaperClaim(
                name=f"score-sde-pc-beats-corrector-{where}-{metric}-{nfe}", relation="better", metric=metric,
                dataset=dataset, a=pc.at(nfe), b=corr.at(2 * nfe), paper="2011.13456", table="Score SDE T1",
                statement=f"PC with {nfe} steps ({2 * nfe} calls) has lower {metric} than the corrector alone with "
                          f"{2 * nfe} calls",
            ))
