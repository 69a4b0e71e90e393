"""FFJORD: a continuous normalizing flow trained by maximum likelihood (Grathwohl, Chen,
Bettencourt, Sutskever & Duvenaud 2018, arXiv 1810.01367), after the Neural ODE's
instantaneous change of variables (Chen et al. 2018, arXiv 1806.07366, Theorem 1).

Convention (gmbench's ODE plugins): base ``p_0 = N(0, I)`` at ``t = 0``, data at ``t = 1``.
A network ``f_theta(z, t)`` defines ``dz/dt = f_theta(z(t), t)``; the log-density of
``x = z(1)`` is (FFJORD Eq. 4)::

    log p_1(z(1)) = log p_0(z(0)) - int_0^1 tr(d f_theta / d z(t)) dt

computed by solving the augmented ODE backwards from ``t = 1`` to ``t = 0`` (FFJORD Eq. 4 /
Algorithm 1)::

    d/dt [z, delta] = [f_theta(z, t), -tr(d f_theta / dz)],   z(1) = x, delta(1) = 0
    log p_1(x) = log N(z(0); 0, I) - delta(0)

Training maximises it (minimises ``-log p_1(x) / D``, nats per dimension, averaged over the
batch) by back-propagating through the solver (``adjoint=False``, default) or with the
adjoint method (``adjoint=True``, ``torchdiffeq.odeint_adjoint``, Neural ODE §2).

Trace (``trace=``):

* ``"exact"``: ``sum_i d f_i / d z_i``, one vector-Jacobian product per dimension (default on
  toy2d, D = 2);
* ``"hutchinson"``: ``eps^T (d f / d z) eps`` (FFJORD Eq. 7, Hutchinson 1989) with Rademacher
  ``eps`` (entries +-1, ``E[eps eps^T] = I``), one vector per example drawn before the solve
  and held fixed over it (FFJORD §3.1): unbiased for the trace at every ``t``, so the whole
  ``-delta(0)`` is unbiased for ``-int tr`` (the trajectory does not depend on ``eps``);
  one vector-Jacobian product per evaluation (default on images).

The label follows the trace: ``"exact"`` (up to the solver's error) or ``"estimate"`` (set on
the instance, as ``flow-matching`` does).

Solvers (``torchdiffeq.odeint``): ``dopri5`` (adaptive Dormand-Prince 5(4), error control on
the whole augmented state), ``rk4`` (torchdiffeq's fourth-order Runge-Kutta, Kutta's 3/8
rule: 4 evaluations per step) and ``euler`` (1 per step), the fixed-step ones on ``steps``
equal steps. FFJORD trains and tests with dopri5 at ``rtol = atol = 1e-5``.

CPU deviations (stated; measurements in docs/methods/ffjord.md):

* Training solver: ``solver="rk4"`` with ``train_steps=4`` (16 evaluations per step) by
  default, not the paper's dopri5. On 8gaussians (tiny MLP, batch 256) one step costs ~4e9
  FLOPs with RK4 x 4, ~6e9 with dopri5 at 1e-3 (26 evaluations at the start, 86 ten steps
  later), ~4e10 at the paper's 1e-5 (170): ``smoke`` (1e11) pays for 25, 10-16 or 2 steps.
  A fixed-step solve also costs the same every step, which the host's meter needs: with an
  adaptive solve a final step that costs more than any step before it can pass the stage's
  allowance, and the meter then fails the run (``BudgetExceeded``; seen with the adjoint at
  3e9 FLOPs). ``solver="dopri5"`` (``train_rtol``/``train_atol``, default 1e-3) gives the
  paper's training and accepts that risk.
* A fixed grid can be exploited: the network learns a field whose RK4 log-density on that
  grid is not the continuous flow's. With RK4 x 2 on 8gaussians the training solver's test
  NLL was 2.87 nats (below the true 3.47) while dopri5 measured 13.5 for the same network.
  Two defences: the likelihood is evaluated with dopri5 at ``rtol = atol = 1e-5``
  (``likelihood_solver="auto"``, the paper's evaluation), so the reported number is the
  continuous flow's whatever the training grid; and the backbone's time embedding uses
  ``time_scale=1`` (frequencies of at most 1 radian per unit of ``t``; the backbones'
  default 1000 suits diffusion's per-example ``t``): with 1000 the RK4 x 4 field was
  visibly a different function between grid points (dopri5 sample SW2 0.54 vs 0.73 for
  RK4 x 10); with 10, at ``small``, the grid's NLL was 0.5 nats below dopri5's; with 1 the
  two agreed within 0.02 nats at ``smoke`` and ``small``.
* Network: the shared backbones (the MLP on toy2d, the U-Net on images, output layer zeroed
  so the flow starts as the identity, ``p_1 = N(0, I)``), not FFJORD's concat-squash layers.
  Along an ODE solve every example shares ``t``; on toy2d the MLP's time conditioning
  (sinusoidal embedding, FiLM projections) is then computed once per evaluation and
  broadcast (:class:`SharedTimeMLP`, the same function as ``MLP(x, t)``; ~40% fewer FLOPs
  per training step). The time horizon is fixed at 1 (FFJORD may learn it).
* Images are modelled in the data's value range ``[-1, 1]`` without FFJORD's logit transform,
  as ``flow-matching`` does; training data are dequantised uniformly within each pixel's
  bin, ``x + (u - 1/2) delta`` with ``u ~ U[0, 1)^D`` and ``delta = (hi - lo) / (levels - 1)``,
  the same dequantisation the host applies to the test split for bits/dim
  (``gmbench.metrics.likelihood``). One training step of the tiny 8x8 U-Net at batch 64
  costs 1.9e11 FLOPs with RK4 x 4 and Hutchinson's trace: ``smoke`` (3e11) pays for one
  step, ``small`` (4e12, small U-Net at 4.2e11) for nine. No kinetic or Jacobian-norm
  regularisation (RNODE).

Samplers (``dz/dt = f_theta(z, t)`` from ``z(0) ~ N(0, I)`` to ``t = 1``): ``dopri5``
(adaptive, ``rtol``/``atol``; sampled once, the host records the calls it counts; its
declared NFE 100 only orders it after the fixed-step settings, as ``flow-matching``'s),
``rk4`` (NFE steps, ``calls_per_step=4``) and ``euler`` (NFE steps, one call each). Images
come out clamped to the data range.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.backbones import MLP, UNet
from gmbench.backbones.embeddings import as_time_batch
from gmbench.data.base import DataSpec
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage, backbone_label
from gmbench_methods.flow_matching import ode

SOLVERS = ("dopri5", "rk4", "euler")
TRACES = ("auto", "exact", "hutchinson")
LIKELIHOOD_SOLVERS = ("auto", "dopri5", "train")
# toy2d: flow-matching's; at `small` (65 RK4 x 4 steps of the small MLP) 3e-3 reached test NLL
# 3.99 nats and SW2 0.42, 1e-2 4.16 and 0.74 (docs/methods/ffjord.md). Images: the U-Net plugins'.
DEFAULT_LR = {"toy2d": 3e-3, "image": 1e-3}
EVALS_PER_STEP = {"rk4": 4, "euler": 1}


# -- the network --------------------------------------------------------------------------------


class SharedTimeMLP(nn.Module):
    """``gmbench.backbones.MLP`` evaluated at one time ``t`` shared by the whole batch.

    ``MLP.forward(x, t)`` embeds ``t`` per example and projects it per example in every
    FiLM layer; along an ODE solve ``t`` is one number, so this computes the conditioning
    once (a batch of one) and broadcasts it. Same parameters, same function
    (``tests/test_ffjord.py`` checks it against ``MLP.forward``); a per-example ``t`` is
    passed to ``MLP.forward`` unchanged.
    """

    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        m = self.mlp
        if torch.is_tensor(t) and t.numel() > 1:
            return m(x, t)
        c = m.act(m.time_embed(as_time_batch(t, 1, x.device)))  # (1, width): broadcast over the batch
        h = m.inp(x)
        for layer in m.layers:
            h = layer(h, c)
        return m.out(torch.cat([m.act(m.norm_out(h)), h], dim=-1))


def build_net(data: DataSpec, model_size: str, time_scale: float) -> nn.Module:
    """The shared backbone (MLP on toy2d, shared ``t``; U-Net on images), output zeroed."""
    if data.modality == "toy2d":
        net: nn.Module = MLP(data.dims, data.dims, size=model_size, time_scale=time_scale)
    else:
        c, h, w = data.shape
        net = UNet(c, c, (h, w), size=model_size, time_scale=time_scale)
    nn.init.zeros_(net.out.weight)
    nn.init.zeros_(net.out.bias)
    return SharedTimeMLP(net) if isinstance(net, MLP) else net


# -- divergence ----------------------------------------------------------------------------------


def exact_divergence(f: torch.Tensor, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``tr(d f / d z)`` per example: one vector-Jacobian product per dimension.

    Examples must not interact in the network (the backbones normalise per example), so the
    gradient of ``f[:, i].sum()`` holds each example's own row ``d f_i / d z``.
    """
    flat = f.flatten(1)
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), z, create_graph=create_graph, retain_graph=True)
        div = div + g.flatten(1)[:, i]
    return div


def hutchinson_divergence(f: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``eps^T (d f / d z) eps`` per example (FFJORD Eq. 7): one vector-Jacobian product."""
    (g,) = torch.autograd.grad((f * eps).sum(), z, create_graph=create_graph, retain_graph=create_graph)
    return (g * eps).flatten(1).sum(1)


class CNFDynamics(nn.Module):
    """The augmented dynamics ``(t, (z, delta)) -> (f(z, t), -tr(df/dz))`` (FFJORD Eq. 4).

    ``eps`` (Hutchinson's noise, the shape of ``z``) is set before each solve and held fixed
    over it. The divergence's graph is kept when the caller records gradients (training,
    the adjoint's backward pass) and dropped otherwise (evaluation). ``calls`` counts
    evaluations.
    """

    def __init__(self, net: nn.Module, trace: str) -> None:
        super().__init__()
        self.net, self.trace = net, trace
        self.eps: torch.Tensor | None = None
        self.calls = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        z, _ = state
        self.calls += 1
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                # a view, not the leaf itself: torch's FlopCounterMode (its ModuleTracker) fails
                # on autograd.grad through a module whose input is a leaf
                z = z.detach().requires_grad_(True).view_as(z)
            f = self.net(z, t)
            if self.trace == "exact":
                div = exact_divergence(f, z, create_graph)
            else:
                div = hutchinson_divergence(f, z, self.eps, create_graph)
        if not create_graph:
            f, div = f.detach(), div.detach()
        return f, -div


# -- solving -------------------------------------------------------------------------------------


def odeint(func, y0, t0: float, t1: float, solver: str, steps: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
           adjoint: bool = False):
    """Solve ``dy/dt = func(t, y)`` from ``t0`` to ``t1`` with torchdiffeq; return ``y(t1)``.

    ``y0`` is a tensor or a tuple of tensors. ``dopri5`` uses ``rtol``/``atol``; ``rk4`` and
    ``euler`` take ``steps`` equal steps on ``linspace(t0, t1, steps + 1)`` (4 and 1
    evaluations per step). ``adjoint``: gradients by the adjoint method
    (``torchdiffeq.odeint_adjoint``, the same solver and grid backwards); ``func`` must then
    be an ``nn.Module``.
    """
    import torchdiffeq

    first = y0[0] if isinstance(y0, tuple) else y0
    ts = torch.tensor([t0, t1], dtype=first.dtype, device=first.device)
    kwargs: dict = {"method": solver}
    if solver == "dopri5":
        kwargs.update(rtol=rtol, atol=atol)
    else:
        kwargs["options"] = {"grid_constructor": lambda f, y, t: torch.linspace(
            float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)}
    if adjoint:
        out = torchdiffeq.odeint_adjoint(func, y0, ts, adjoint_params=tuple(func.parameters()), **kwargs)
    else:
        out = torchdiffeq.odeint(func, y0, ts, **kwargs)
    return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    z = z.flatten(1)
    return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


# -- the method ----------------------------------------------------------------------------------


class FFJORD(Method):
    """Continuous normalizing flow trained by maximum likelihood (FFJORD).

    Args:
        data: the dataset's spec (toy2d or image).
        model_size: backbone preset (MLP for toy2d, U-Net for images).
        trace: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact on toy2d, Hutchinson on images).
        solver: training solver, ``"rk4"`` (default, see the module doc), ``"euler"`` or
            ``"dopri5"`` (the paper's).
        train_steps: steps of a fixed-step training solver.
        train_rtol, train_atol: tolerances of a dopri5 training solve.
        adjoint: gradients by the adjoint method instead of back-propagating through the solver.
        rtol, atol: tolerances of the ``dopri5`` sampler and the dopri5 likelihood (paper: 1e-5).
        likelihood_solver: ``"dopri5"``, ``"train"`` (the training solver and steps) or
            ``"auto"`` (= ``"dopri5"``; ``"train"`` is cheaper but neither exact nor a bound).
        lr: Adam learning rate; None picks ``DEFAULT_LR`` for the modality.
        grad_clip: gradient-norm clipping.
        time_scale: the backbone's time-embedding scale (1: a field smooth in ``t``, see
            the module doc; the backbones' default is 1000).
    """

    name = "ffjord"
    family = "flows"
    paper = "1810.01367"
    title = "FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models"
    modalities = ("toy2d", "image")
    samplers = (
        SamplerInfo("euler", adjustable_nfe=True, deterministic=True, default_nfe=50),
        SamplerInfo("rk4", adjustable_nfe=True, deterministic=True, default_nfe=10, calls_per_step=4.0),
        # default_nfe only schedules it after the fixed-step settings (as flow-matching's dopri5)
        SamplerInfo("dopri5", adjustable_nfe=False, deterministic=True, default_nfe=100, adaptive=True),
    )
    # the class states the toy2d label (an exact trace); a Hutchinson instance sets "estimate"
    likelihood = "exact"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        trace: str = "auto",
        solver: str = "rk4",
        train_steps: int = 4,
        train_rtol: float = 1e-3,
        train_atol: float = 1e-3,
        adjoint: bool = False,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        likelihood_solver: str = "auto",
        lr: float | None = None,
        grad_clip: float | None = 1.0,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__(data, model_size)
        if trace not in TRACES:
            raise ValueError(f"ffjord: trace must be one of {TRACES}, got {trace!r}")
        if solver not in SOLVERS:
            raise ValueError(f"ffjord: solver must be one of {SOLVERS}, got {solver!r}")
        if likelihood_solver not in LIKELIHOOD_SOLVERS:
            raise ValueError(f"ffjord: likelihood_solver must be one of {LIKELIHOOD_SOLVERS}, got {likelihood_solver!r}")
        if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
            raise ValueError(f"ffjord: train_steps must be a positive integer, got {train_steps!r}")
        if not all(float(v) > 0 for v in (train_rtol, train_atol, rtol, atol)):
            raise ValueError("ffjord: train_rtol, train_atol, rtol and atol must be positive")
        if not isinstance(adjoint, bool):
            raise ValueError(f"ffjord: adjoint must be True or False, got {adjoint!r}")
        if trace == "auto":
            trace = "exact" if data.modality == "toy2d" else "hutchinson"
        if likelihood_solver == "auto":
            likelihood_solver = "dopri5"
        self.trace, self.solver, self.train_steps = trace, solver, train_steps
        self.train_rtol, self.train_atol = float(train_rtol), float(train_atol)
        self.rtol, self.atol = float(rtol), float(atol)
        self.samplers = ode.with_tolerances(type(self).samplers, "dopri5", self.rtol, self.atol)  # recorded
        self.adjoint, self.likelihood_solver = adjoint, likelihood_solver
        self.likelihood = "exact" if trace == "exact" else "estimate"
        self.lr = DEFAULT_LR[data.modality] if lr is None else float(lr)
        self.grad_clip = grad_clip
        self.dims = data.dims
        self.bin_width = None
        if data.modality == "image":
            lo, hi = data.value_range
            self.bin_width = (hi - lo) / (data.levels - 1)
        self.clip_range = data.value_range if data.modality == "image" else None
        self.net: nn.Module = build_net(data, model_size, float(time_scale))
        self.dynamics = CNFDynamics(self.net, trace)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def backbone(self) -> str:
        """``"MLP(tiny, ...M)"`` on toy2d (through :class:`SharedTimeMLP`), ``"UNet(...)"`` on images."""
        family = "MLP" if isinstance(self.net, SharedTimeMLP) else type(self.net).__name__
        return backbone_label(family, self.model_size, self.num_parameters())

    # -- the likelihood (FFJORD Eq. 4) ----------------------------------------------------------

    def cnf_log_prob(self, x: torch.Tensor, solver: str, steps: int, rtol: float, atol: float,
                     eps: torch.Tensor | None, adjoint: bool = False) -> torch.Tensor:
        """``log p_1(x)`` per example (nats): the augmented ODE solved from ``t = 1`` to 0.

        ``eps`` is Hutchinson's noise (needed when ``trace`` is ``"hutchinson"``).
        Differentiable in the parameters when called with gradients on.
        """
        if self.trace == "hutchinson" and eps is None:
            raise MethodError("ffjord: the Hutchinson trace needs its noise eps")
        self.dynamics.eps = eps
        delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z0, delta = odeint(self.dynamics, (x, delta0), 1.0, 0.0, solver, steps, rtol, atol, adjoint)
        return standard_normal_logp(z0) - delta

    def _hutchinson_noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """Rademacher noise, one vector per example (None for the exact trace)."""
        if self.trace != "hutchinson":
            return None
        if generator is None:  # training: torch's seeded global RNG, as the other plugins' noise
            return torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        return ode.rademacher(x.shape, generator, x.device).to(x.dtype)

    # -- training: maximum likelihood ------------------------------------------------------------

    def stages(self) -> list[Stage]:
        return [Stage("flow", (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),))]

    def dequantise(self, x: torch.Tensor) -> torch.Tensor:
        """Images: uniform noise within each pixel's quantisation bin (the host's test dequantisation)."""
        if self.bin_width is None:
            return x
        return x + (torch.rand_like(x) - 0.5) * self.bin_width

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        x = self.dequantise(batch)
        logp = self.cnf_log_prob(x, self.solver, self.train_steps, self.train_rtol, self.train_atol,
                                 self._hutchinson_noise(x, None), self.adjoint)
        return {"adam": -logp.mean() / self.dims}

    # -- sampling --------------------------------------------------------------------------------

    def velocity(self, t, z: torch.Tensor) -> torch.Tensor:
        return self.net(z, t)

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        self.checked_sampler(sampler, nfe)  # unknown names and bad nfe fail clearly
        z = ode.randn((n, *self.data.shape), generator, self.device)  # z(0) ~ N(0, I)
        x = odeint(self.velocity, z, 0.0, 1.0, sampler, nfe if sampler != "dopri5" else 1, self.rtol, self.atol)
        if self.clip_range is not None:
            x = x.clamp(*self.clip_range)
        return x

    # -- evaluation likelihood -------------------------------------------------------------------

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.checked_input(x)
        eps = self._hutchinson_noise(x, generator)
        if self.likelihood_solver == "dopri5":
            ll = self.cnf_log_prob(x, "dopri5", 1, self.rtol, self.atol, eps)
        else:
            ll = self.cnf_log_prob(x, self.solver, self.train_steps, self.train_rtol, self.train_atol, eps)
        return ll.to(torch.float32)


@hookimpl
def gmbench_register_methods(register):
    register(FFJORD)


@hookimpl
def gmbench_register_claims(register):
    """FFJORD T2 (arXiv 1810.01367): FFJORD reaches lower bits/dim than RealNVP (CIFAR-10 3.40
    vs 3.49, MNIST 0.99 vs 1.06): ``ffjord`` against ``realnvp`` in ``test_bpd`` on digits.
    FFJORD T3: on continuous (tabular) data FFJORD's test NLL beats RealNVP's on every set
    (POWER -0.46 vs -0.17 ...): ``test_nll`` on every toy2d set."""
    from gmbench.claims import Cell, PaperClaim

    register(PaperClaim(
        name="ffjord-beats-realnvp-digits-bpd", relation="better", metric="test_bpd", dataset="digits",
        a=Cell("ffjord"), b=Cell("realnvp"), paper="1810.01367", table="FFJORD T2",
        statement="FFJORD has lower test bits/dim than RealNVP (CIFAR-10 3.40 vs 3.49)",
    ))
    register(PaperClaim(
        name="ffjord-beats-realnvp-toy2d-nll", relation="better", metric="test_nll", dataset="modality:toy2d",
        a=Cell("ffjord"), b=Cell("realnvp"), paper="1810.01367", table="FFJORD T3",
        statement="FFJORD has lower test NLL than RealNVP on continuous data (tabular sets, e.g. POWER -0.46 vs -0.17)",
    ))
