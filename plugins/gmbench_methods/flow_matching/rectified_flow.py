"""Rectified flow with reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast", arXiv 2209.03003).

Convention: ``X_0 ~ pi_0 = N(0, I)`` (noise) at ``t = 0``, ``X_1 ~ pi_1`` (data) at ``t = 1``.

Stage ``flow`` (1-rectified flow, Eq. 1 and Algorithm 1): for a coupling ``(X_0, X_1)``
(independent at first), the linear interpolation ``X_t = t X_1 + (1 - t) X_0`` and

    min_v  int_0^1 E || (X_1 - X_0) - v(X_t, t) ||^2 dt

(squared error averaged over dimensions here, a constant factor of the paper's norm);
``t ~ U[0, 1]``. The rectified flow is the ODE ``dZ_t = v(Z_t, t) dt``, ``Z_0 ~ pi_0``.

Stage ``reflow`` (2-rectified flow, §2.2 "Reflow"): at its start, ``on_stage_start`` draws
fresh noise ``Z_0`` and simulates the stage-1 flow to ``Z_1`` with ``reflow_steps`` Euler steps
(the paper uses an adaptive RK45 solver; Euler keeps the cost countable and fixed), and
returns the pairs as the stage's training data: a tensor of shape ``(N, 2, *data.shape)``
with ``[:, 0] = Z_0`` (noise) and ``[:, 1] = Z_1`` (the flow's sample). The same network
(initialised from 1-rectified flow, as the paper's reflow does) is then trained with the
same loss on the coupling ``(Z_0, Z_1)``.

Budget: the stages get ``flow_share`` and ``1 - flow_share`` of the training FLOPs (0.5/0.5
by default). Pair generation spends at most ``pair_share`` (default 0.3) of the reflow
stage's allowance (``self.budget_view.stage_flops["reflow"]``), the rest trains: one pair
is generated first and its cost counted (``gmbench.flops.count_cost``: every forward call,
noise draw and Euler update); that per-pair cost bounds a pair's cost in any larger batch
(each op's cost grows at least linearly in the batch), so further chunks are sized to fit
what remains of the share (``max_pairs`` caps the count). Without a budget view (a direct
call) it makes as many pairs as there are training examples. The host counts the same work
against the stage's allowance and would stop it past the allowance: the sizing keeps it well
under.

``reflow=False`` trains 1-rectified flow only (one stage, the whole budget): the label
``rectified-flow[reflow=False]`` that RF T1's claim compares against.

Samplers: ``euler`` with NFE steps (any NFE, one network call per step), and ``one-step``,
the one-step Euler map ``Z_1 = Z_0 + v(Z_0, 0)`` sampled once at NFE 1 (every budget's NFE
grid starts at 10, and RF T1's claim is about one step).

Straightness (§2.3, the straightness of a flow): ``S(Z) = int_0^1 E || (Z_1 - Z_0) - v(Z_t, t) ||^2 dt``
along the flow's own trajectories, 0 for straight paths. :meth:`RectifiedFlow.straightness`
estimates it with ``steps`` Euler steps and ``n`` trajectories (squared norm summed over
dimensions, per trajectory, averaged). The host records it as the method's own metric
``straightness`` (:class:`Straightness`, ``extra_metrics``), and the claim
``rf-reflow-straightens-toy2d`` compares 2-RF's with 1-RF's.

Likelihood: as ``flow-matching`` (``ode.ode_log_likelihood``): the instantaneous change of
variables integrated with dopri5 at ``rtol = atol = 1e-4`` (``likelihood_steps="auto"``;
an integer gives that many RK4 steps); exact Jacobian trace on toy2d
(``"exact"``), Hutchinson's estimate on images (``"estimate"``, set on the instance).
Images come out of the samplers clamped to the data range.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.data.base import DataSpec
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage
from gmbench.metrics.base import EvalContext, Metric, MetricOutput

from . import ode

DEFAULT_LR = {"toy2d": 3e-3, "image": 1e-3}
# pairs generated per batch in on_stage_start (memory, not cost: the cost is per pair)
PAIR_CHUNK = {"toy2d": 4096, "image": 256}


class RectifiedFlow(Method):
    """1-rectified flow, then (``reflow=True``) 2-rectified flow on its own (noise, sample) pairs.

    Args:
        data: the dataset's spec (toy2d or image).
        model_size: backbone preset (MLP for toy2d, U-Net for images).
        reflow: train the reflow stage (2-rectified flow); False: 1-rectified flow only.
        flow_share: budget share of stage ``flow`` when ``reflow`` (the rest is ``reflow``'s).
        pair_share: share of the reflow stage's allowance spent generating pairs.
        reflow_steps: Euler steps of the stage-1 flow that generate each pair.
        max_pairs: cap on the number of pairs (None: as many as the share pays for).
        lr: Adam learning rate (both stages); None picks ``DEFAULT_LR`` for the modality.
        grad_clip: gradient-norm clipping.
        likelihood_steps: RK4 steps of the likelihood ODE, ``"adaptive"`` (dopri5 at
            ``likelihood_rtol`` / ``likelihood_atol``) or ``"auto"`` (adaptive).
        likelihood_rtol, likelihood_atol: tolerances of the adaptive likelihood ODE (1e-4).
    """

    name = "rectified-flow"
    family = "flow-matching"
    paper = "2209.03003"
    title = "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow"
    modalities = ("toy2d", "image")
    samplers = (
        SamplerInfo("euler", adjustable_nfe=True, deterministic=True, default_nfe=50),
        SamplerInfo("one-step", adjustable_nfe=False, deterministic=True, default_nfe=1),
    )
    # The class states the toy2d label (an exact trace); an image instance sets "estimate".
    likelihood = "exact"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        reflow: bool = True,
        flow_share: float = 0.5,
        pair_share: float = 0.3,
        reflow_steps: int = 20,
        max_pairs: int | None = None,
        lr: float | None = None,
        grad_clip: float | None = 1.0,
        likelihood_steps: int | str = "auto",
        likelihood_rtol: float = ode.DEFAULT_LIKELIHOOD_TOL,
        likelihood_atol: float = ode.DEFAULT_LIKELIHOOD_TOL,
    ) -> None:
        super().__init__(data, model_size)
        if not isinstance(reflow, bool):
            raise ValueError(f"rectified-flow: reflow must be true or false, got {reflow!r}")
        if not 0.0 < float(flow_share) < 1.0:
            raise ValueError(f"rectified-flow: flow_share must be in (0, 1), got {flow_share!r}")
        if not 0.0 < float(pair_share) < 1.0:
            raise ValueError(f"rectified-flow: pair_share must be in (0, 1), got {pair_share!r}")
        likelihood_steps, likelihood_rtol, likelihood_atol = ode.likelihood_solver(
            "rectified-flow", likelihood_steps, likelihood_rtol, likelihood_atol)
        if isinstance(reflow_steps, bool) or not isinstance(reflow_steps, int) or reflow_steps < 1:
            raise ValueError(f"rectified-flow: reflow_steps must be a positive integer, got {reflow_steps!r}")
        if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1):
            raise ValueError(f"rectified-flow: max_pairs must be a positive integer or None, got {max_pairs!r}")
        self.reflow, self.flow_share, self.pair_share = reflow, float(flow_share), float(pair_share)
        self.reflow_steps, self.max_pairs, self.likelihood_steps = reflow_steps, max_pairs, likelihood_steps
        self.likelihood_rtol, self.likelihood_atol = likelihood_rtol, likelihood_atol
        self.lr = DEFAULT_LR[data.modality] if lr is None else float(lr)
        self.grad_clip = grad_clip
        self.trace = "exact" if data.modality == "toy2d" else "hutchinson"
        self.likelihood = "exact" if self.trace == "exact" else "estimate"
        self.clip_range = data.value_range if data.modality == "image" else None
        self.net: nn.Module = ode.build_velocity_net(data, model_size)
        #: what the last on_stage_start("reflow") did: pairs, FLOPs, the allowance it sized from
        self.pair_report: dict = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    # -- training ------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        def opt():
            return (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),)

        if not self.reflow:
            return [Stage("flow", opt())]
        return [Stage("flow", opt(), self.flow_share), Stage("reflow", opt(), 1.0 - self.flow_share)]

    @staticmethod
    def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X_t, X_1 - X_0)`` with ``X_t = t X_1 + (1 - t) X_0`` (Eq. 1) for times ``t`` (N,)."""
        tb = t.reshape(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
        return tb * x1 + (1 - tb) * x0, x1 - x0

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        if stage == "reflow":  # pairs from on_stage_start: (B, 2, *shape)
            x0, x1 = batch[:, 0], batch[:, 1]
        else:  # independent coupling: data with fresh noise
            x1 = batch
            x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        xt, target = self.interpolate(x0, x1, t)
        return {"adam": (self.net(xt, t) - target).pow(2).mean()}

    def _pairs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` (noise, sample) pairs of the current flow: (n, 2, *shape)."""
        z0 = ode.randn((n, *self.data.shape), generator, self.device)
        with torch.no_grad():
            z1 = ode.integrate_fixed(self.velocity, z0, self.reflow_steps, "euler")
        return torch.stack([z0, z1], dim=1)

    def on_stage_start(self, stage: str, train_x: torch.Tensor, generator: torch.Generator):
        if stage != "reflow":
            return None
        from gmbench.flops import count_cost

        view = self.budget_view
        allowance = None if view is None else float(view.stage_flops[stage]) * self.pair_share
        target = self.max_pairs if self.max_pairs is not None else (len(train_x) if allowance is None else math.inf)
        chunk = PAIR_CHUNK[self.data.modality]
        parts, made, spent, per_pair = [], 0, 0.0, None
        while made < target:
            size = min(chunk, target - made)
            if allowance is not None:
                # the first pair alone measures the cost; then what the rest of the share pays for
                size = 1 if per_pair is None else min(size, math.floor((allowance - spent) / per_pair))
                if size < 1:
                    break
            pairs, mode = count_cost(self._pairs, int(size), generator)
            spent += mode.total
            per_pair = max(per_pair or 0.0, mode.total / size)
            parts.append(pairs)
            made += int(size)
        if allowance is not None and spent > allowance:
            raise MethodError(
                f"rectified-flow: one reflow pair costs {per_pair:.3g} FLOPs, more than the {allowance:.3g} that "
                f"pair_share={self.pair_share} of the reflow stage's allowance pays for: raise the budget or pair_share")
        self.pair_report = {"pairs": made, "flops": spent, "allowance": allowance, "flops_per_pair": per_pair}
        return torch.cat(parts)

    def stage_notes(self, stage: str) -> dict:
        """The reflow stage's pairs: how many its allowance paid for, and their FLOPs."""
        return dict(self.pair_report) if stage == "reflow" else {}

    # -- sampling ---------------------------------------------------------------------------

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.net(x, t)

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        self.sampler(sampler)  # unknown names fail with a suggestion
        if sampler == "one-step":
            nfe = 1
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise MethodError(f"rectified-flow: nfe must be a positive integer, got {nfe!r}")
        x = ode.randn((n, *self.data.shape), generator, self.device)  # Z_0 ~ N(0, I)
        x = ode.integrate_fixed(self.velocity, x, nfe, "euler")
        if self.clip_range is not None:
            x = x.clamp(*self.clip_range)
        return x

    @torch.no_grad()
    def straightness(self, n: int, generator: torch.Generator, steps: int = 100) -> float:
        """``S(Z) = int_0^1 E || (Z_1 - Z_0) - v(Z_t, t) ||^2 dt`` (§2.3) on ``n`` trajectories.

        Euler with ``steps`` steps; the integral is the left Riemann sum at the steps' start
        times (the velocities the Euler steps use), so for a field constant along each path
        the value is exactly 0. Squared norms are summed over dimensions (not clamped).
        """
        z = z0 = ode.randn((n, *self.data.shape), generator, self.device)
        velocities = []
        for t, t_next in zip(ode.time_grid(steps)[:-1], ode.time_grid(steps)[1:]):
            v = self.velocity(z, t)
            velocities.append(v)
            z = z + (t_next - t) * v
        displacement = z - z0
        sq = [(displacement - v).double().flatten(1).pow(2).sum(1).mean() for v in velocities]
        return float(torch.stack(sq).mean())

    # -- likelihood ---------------------------------------------------------------------------

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.checked_input(x)
        return ode.ode_log_likelihood(self.velocity, x, self.likelihood_steps, self.trace, generator,
                                      rtol=self.likelihood_rtol, atol=self.likelihood_atol).to(torch.float32)


class Straightness(Metric):
    """The paper's straightness of the learned flow (§2.3, :meth:`RectifiedFlow.straightness`):
    ``S(Z) = int_0^1 E || (Z_1 - Z_0) - v(Z_t, t) ||^2 dt``, 0 for straight paths.

    Estimated on fresh trajectories seeded by the run's seed (``trajectories`` of them, Euler
    with ``steps`` steps): 1000 x 100 on toy2d, 128 x 50 on images (the U-Net's calls cost
    about one sampler evaluation at NFE 50). A method-specific metric
    (``RectifiedFlow.extra_metrics``): ``applies_to`` is False so it runs for no other method.
    """

    name = "straightness"
    version = "1"
    kind = "model"
    modalities = ("toy2d", "image")
    description = "rectified flow's straightness S(Z) of its sampling paths (0 = straight)"
    outputs = (MetricOutput("straightness", "lower", "E int ||(Z_1 - Z_0) - v(Z_t, t)||^2 dt over Euler paths"),)
    settings = {"toy2d": (1000, 100), "image": (128, 50)}

    def applies_to(self, dataset) -> bool:
        return False  # method-specific: RectifiedFlow.extra_metrics

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        trajectories, steps = self.settings[ctx.dataset.modality]
        return {"trajectories": trajectories, "steps": steps}

    def score_model(self, method, ctx: EvalContext) -> dict:
        trajectories, steps = self.settings[ctx.dataset.modality]
        generator = torch.Generator().manual_seed(10_000 + ctx.seed)  # apart from the samplers' draws
        with torch.no_grad():
            return {"straightness": method.straightness(trajectories, generator, steps=steps)}


RectifiedFlow.extra_metrics = (Straightness(),)


@hookimpl
def gmbench_register_methods(register):
    register(RectifiedFlow)


@hookimpl
def gmbench_register_metrics(register):
    register(Straightness())


@hookimpl
def gmbench_register_claims(register):
    """RF T1 (arXiv 2209.03003): one-step samples of 2-rectified flow are far better than
    those of 1-rectified flow (CIFAR-10 FID 12.21 vs 378). ``rectified-flow`` (reflow on)
    against ``rectified-flow[reflow=False]`` with the ``one-step`` sampler (NFE 1), sliced W2
    on every toy2d set and FID on digits. At equal total budget the 1-RF run trains its one
    stage twice as long, so this checks reflow against more training, not only against its
    own first stage."""
    from gmbench.claims import Cell, PaperClaim

    register(PaperClaim(
        name="rf-reflow-straightens-toy2d", relation="better", metric="straightness", dataset="modality:toy2d",
        a=Cell("rectified-flow"), b=Cell("rectified-flow[reflow=False]"), paper="2209.03003", table="RF §2.3, Fig. 2",
        statement="2-rectified flow's sampling paths are straighter (lower S(Z)) than 1-rectified flow's",
    ))
    two, one = Cell("rectified-flow", "one-step", 1), Cell("rectified-flow[reflow=False]", "one-step", 1)
    for metric, dataset, where in (("swd", "modality:toy2d", "toy2d"), ("fid", "digits", "digits")):
        register(PaperClaim(
            name=f"rf-reflow-beats-1rf-one-step-{where}-{metric}", relation="better", metric=metric, dataset=dataset,
            a=two, b=one, paper="2209.03003", table="RF T1",
            statement=f"2-rectified flow's one-step samples have lower {metric} than 1-rectified flow's",
        ))
