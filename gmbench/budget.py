"""Compute budgets: the fairness rule of a comparison, and the FLOP meter.

A budget fixes, per data modality, the training FLOPs (forward and backward,
every network and stage, counted with ``torch.utils.flop_counter``), the
batch size, and for all runs a wall-clock cap (a safety net: FLOPs are the
rule), the model-size preset, the evaluation sample count and the NFE grid.

FLOPs are counted by :class:`gmbench.flops.OpCostMode`: matrix products by
torch's formulas plus one per element for every other op, forward, backward,
optimizer update and ``no_grad`` work alike. CPU work outside torch (numpy, an
OT assignment) is invisible to it, so records state wall time per stage beside
FLOPs. Counting costs about one bare step per counted step on the tiny MLP, so
:class:`StepMeter` counts the first steps of a stage and seeded random audits
exactly, charging the confirmed constant in between — and counts every step
once a cost changes (see benchmarks/bench_host_overhead.py for the overhead).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from gmbench.hookspecs import hookimpl


@dataclass(frozen=True)
class Budget:
    """A named compute budget.

    Attributes:
        name: ``smoke``, ``small``, ``standard``, ``large`` or a plugin's own.
        train_flops: training FLOPs allowed, per modality.
        batch_size: training batch size, per modality.
        wall_clock_s: cap on one run's training time in seconds, a safety net: a run
            that reaches it stops training, is still evaluated and is recorded
            ``incomplete``. None (the presets) derives it from the FLOPs at a
            conservative throughput for the device (``CONSERVATIVE_FLOPS_PER_S``).
        model_size: backbone preset (``tiny``/``small``/``base``/``large``).
        eval_samples: samples drawn per (sampler, NFE) for metrics, per modality.
        nfe_grid: NFE values tried for samplers whose NFE is adjustable.
        eval_timeout_s: cap on one run's evaluation time, in seconds.
        curve_fractions: fractions of the training allowance at which a run also
            evaluates its method on a cheap protocol (``gmbench.curve``), giving its
            quality-versus-training-compute curve from the one run; the point at 1
            is always taken. ``()`` takes no curve.
        curve_samples: samples (or, for a likelihood primary metric, test examples)
            per curve point, per modality.
    """

    name: str
    train_flops: dict
    batch_size: dict
    wall_clock_s: float | None
    model_size: str
    eval_samples: dict
    nfe_grid: tuple[int, ...]
    eval_timeout_s: float = 600.0
    description: str = ""
    curve_fractions: tuple[float, ...] = ()
    curve_samples: dict = field(default_factory=lambda: {"toy2d": 500, "image": 256, "text": 64})

    def flops_for(self, modality: str) -> float:
        return float(self.train_flops[modality])

    def train_cap_for(self, modality: str, device: str = "cpu") -> float:
        """The training wall-clock cap in force for ``modality`` on ``device`` (seconds):
        ``wall_clock_s`` (or the derived cap) times :func:`cap_scale`."""
        return self.base_train_cap_for(modality, device) * cap_scale()

    def base_train_cap_for(self, modality: str, device: str = "cpu") -> float:
        """The training cap before ``$GMBENCH_CAP_SCALE``: ``wall_clock_s``, or where the budget
        states none, its FLOPs for ``modality`` at a conservative rate for ``device``, at least
        ``MIN_DERIVED_CAP_S``."""
        if self.wall_clock_s is not None:
            return float(self.wall_clock_s)
        kind = str(device).split(":")[0]
        rate = CONSERVATIVE_FLOPS_PER_S.get(kind, CONSERVATIVE_FLOPS_PER_S["cpu"])
        return max(MIN_DERIVED_CAP_S, self.flops_for(modality) / rate)

    @property
    def train_cap_s(self) -> float:
        """The largest training cap over modalities on a CPU (for hung-run timeouts)."""
        return max(self.train_cap_for(m, "cpu") for m in self.train_flops)

    @property
    def eval_cap_s(self) -> float:
        """The evaluation wall-clock cap in force: ``eval_timeout_s`` times :func:`cap_scale`."""
        return float(self.eval_timeout_s) * cap_scale()

    def fingerprint_fields(self, modality: str) -> dict:
        return {
            "budget": self.name,
            "train_flops": self.flops_for(modality),
            "batch_size": self.batch_size[modality],
            "model_size": self.model_size,
            "eval_samples": self.eval_samples[modality],
            "nfe_grid": list(self.nfe_grid),
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nfe_grid"] = list(self.nfe_grid)
        return d

    def view(self, modality: str, stage_flops: dict) -> "BudgetView":
        """What a method may know of this budget for ``modality`` (set as ``method.budget_view``)."""
        return BudgetView(self.name, modality, self.flops_for(modality), dict(stage_flops), self.batch_size[modality],
                          self.eval_samples[modality], tuple(self.nfe_grid), self.model_size)


@dataclass(frozen=True)
class BudgetView:
    """The budget as a method sees it, so stage preparation can size itself.

    Attributes:
        name, modality: the budget and the data's modality.
        train_flops: the run's whole training allowance.
        stage_flops: each stage's allowance by stage name (preparation included:
            ``on_stage_start`` is stopped with an error once it passes it).
        batch_size, eval_samples, nfe_grid, model_size: the budget's settings.
    """

    name: str
    modality: str
    train_flops: float
    stage_flops: dict
    batch_size: int
    eval_samples: int
    nfe_grid: tuple
    model_size: str


#: Throughput a run is assumed to get at worst, for the derived wall-clock caps. Measured on
#: this project's 2-core CPU machine: `small` digits ddpm trained at 2.7e10 FLOP/s on a quiet
#: core, but the VAE's tiny MLPs at `smoke` only at 1.45e9 FLOP/s with the load average at 6
#: (small matrices run far below peak, and other jobs take their share); 5e8 leaves room
#: for a machine at load ~13. A GPU gets 100x.
CONSERVATIVE_FLOPS_PER_S = {"cpu": 5.0e8, "cuda": 5.0e10, "mps": 5.0e9}
MIN_DERIVED_CAP_S = 60.0

# FLOP numbers are sized on the built-in backbones, measured on one CPU core
# (benchmarks/bench_host_overhead.py prints throughput): a training step of the
# tiny MLP at batch 256 costs 2.6e8 FLOPs, of the tiny 8x8 U-Net at batch 64
# 5.8e9, of the tiny transformer (64 wide) on 32 x 64 tokens ~1.3e9; the small
# presets cost about 4x, 2.2x and 8x that. At ``smoke`` a toy2d run is ~400
# steps (seconds), at ``small`` ~1000 steps of the small MLP.
SMOKE = Budget(
    name="smoke",
    train_flops={"toy2d": 1.0e11, "image": 3.0e11, "text": 3.0e11},
    batch_size={"toy2d": 256, "image": 64, "text": 32},
    wall_clock_s=None,  # derived from the FLOPs (CONSERVATIVE_FLOPS_PER_S)
    model_size="tiny",
    eval_samples={"toy2d": 1000, "image": 256, "text": 64},
    nfe_grid=(10, 50),
    eval_timeout_s=120,
    description="seconds per run on a CPU: tests and CI",
)
SMALL = Budget(
    name="small",
    # text: 6e12 (1.15M training characters) is where the ar reference comes within 0.05
    # bits/char of the true source's own code length on the test windows (docs/text_budget.md)
    train_flops={"toy2d": 1.0e12, "image": 4.0e12, "text": 6.0e12},
    batch_size={"toy2d": 256, "image": 64, "text": 32},
    wall_clock_s=None,  # derived from the FLOPs (CONSERVATIVE_FLOPS_PER_S)
    model_size="small",
    eval_samples={"toy2d": 2000, "image": 1000, "text": 256},
    nfe_grid=(10, 20, 50, 100),
    eval_timeout_s=900,
    curve_fractions=(0.125, 0.25, 0.5),
    description="default of `gmbench run`: the whole suite in minutes on a 2-core CPU",
)
STANDARD = Budget(
    name="standard",
    train_flops={"toy2d": 1.0e13, "image": 1.0e15, "text": 1.0e15},
    batch_size={"toy2d": 512, "image": 128, "text": 128},
    wall_clock_s=None,  # derived from the FLOPs (CONSERVATIVE_FLOPS_PER_S)
    model_size="base",
    eval_samples={"toy2d": 10000, "image": 10000, "text": 1000},
    nfe_grid=(10, 20, 50, 100, 250, 1000),
    eval_timeout_s=3600,
    curve_fractions=(0.125, 0.25, 0.5),
    description="one GPU, hours for the suite",
)
LARGE = Budget(
    name="large",
    train_flops={"toy2d": 1.0e14, "image": 2.0e16, "text": 2.0e16},
    batch_size={"toy2d": 1024, "image": 256, "text": 256},
    wall_clock_s=None,  # derived from the FLOPs (CONSERVATIVE_FLOPS_PER_S)
    model_size="large",
    eval_samples={"toy2d": 50000, "image": 50000, "text": 5000},
    nfe_grid=(10, 20, 50, 100, 250, 1000),
    eval_timeout_s=4 * 3600,
    curve_fractions=(0.125, 0.25, 0.5),
    description="GPU days: paper-scale comparisons",
)


CAP_SCALE_ENV = "GMBENCH_CAP_SCALE"


def cap_scale() -> float:
    """Multiplier of every wall-clock cap (training, evaluation, hung-run kill), from
    ``$GMBENCH_CAP_SCALE`` (default 1).

    Caps are safety nets, never the fairness rule (FLOPs are): on a slow or busy
    machine a user raises them instead of losing runs, and the test suite runs
    with them far above any plausible run so that no verdict depends on machine
    speed (tests of the caps themselves set it back to 1).
    """
    raw = os.environ.get(CAP_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    from gmbench.errors import EnvironmentSettingError

    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise EnvironmentSettingError(f"${CAP_SCALE_ENV}={raw!r}: give a positive number, e.g. 4, or unset it")
    return value


@hookimpl
def gmbench_register_budgets(register):
    for b in (SMOKE, SMALL, STANDARD, LARGE):
        register(b)


class BudgetExceeded(RuntimeError):
    """A run used more than its budget (an audited step revealed uncounted work)."""


@dataclass
class StepMeter:
    """Charges every training step its cost without counting every step (see module doc).

    The first steps of a stage are counted exactly until ``exact_steps``
    consecutive ones cost the same (an optimizer's first step allocates its
    state, so it differs; after ``max_warmup_steps`` without that, every step is
    counted). Later steps are charged that constant, and ``audits`` steps are
    counted at random — drawn from a generator seeded by the host (``seed``), so
    a method cannot tell from the step number which steps are checked (docs/integrity.md) — with at least
    ``min_audits`` per stage and ``audit_rate`` of the expected remaining steps.
    The step that may be the last one to fit is always counted. An audited step
    whose cost differs from the constant switches the meter to counting every
    step from then on, and the steps since the last matching audit are
    re-charged at the higher cost (they may have done the same extra work).
    When counting every step the expected cost of the next step is the largest
    seen so far. ``over_budget`` is True when counted work passed ``allowance``.

    Use ``with meter.step(): ...`` around everything a method runs in a step.
    """

    allowance: float
    seed: int = 0
    exact_steps: int = 3
    max_warmup_steps: int = 10
    audit_rate: float = 0.01
    min_audits: int = 8
    total: float = 0.0
    matmul_flops: float = 0.0
    element_ops: float = 0.0
    steps: int = 0
    counted_steps: int = 0
    constant: float | None = None
    every_step: bool = False
    max_cost: float = 0.0
    last_verified: int = 0
    planned_audits: int = 0
    audit_start: int = 0
    audit_block: float = 0.0
    audit_index: int = 0
    next_audit: int = -1
    variation: str = ""
    first_costs: list = field(default_factory=list)
    matmul_share: float = 1.0

    def step(self):
        return _MeteredStep(self)

    @property
    def next_step_cost(self) -> float:
        if self.every_step or self.constant is None:
            return self.max_cost
        return self.constant

    @property
    def over_budget(self) -> bool:
        return self.total > self.allowance * (1 + 1e-9)

    def _must_count(self) -> bool:
        if self.every_step or self.constant is None or self.steps == self.next_audit:
            return True
        # the step that may be the last to fit is counted, so the final check is exact
        return self.total + 2 * self.next_step_cost > self.allowance

    def _plan_audits(self) -> None:
        """Cut the expected remaining steps into ``k`` blocks with one audit at a seeded
        position in each: exactly ``k`` audits if the stage runs its course, none of
        them at a predictable step."""
        import math

        remaining = int((self.allowance - self.total) // max(self.constant, 1.0))
        k = max(self.min_audits, math.ceil(self.audit_rate * remaining))
        if remaining <= k:
            self.every_step = True
            return
        self.planned_audits, self.audit_start, self.audit_block = k, self.steps, remaining / k
        self._advance_audit(0)

    def _advance_audit(self, i: int) -> None:
        import hashlib

        self.audit_index = i
        if i >= self.planned_audits:
            self.next_audit = -1
            return
        lo = self.audit_start + int(i * self.audit_block)
        hi = self.audit_start + int((i + 1) * self.audit_block)
        h = int.from_bytes(hashlib.sha256(f"gmbench-audit:{self.seed}:{i}".encode()).digest()[:8], "big")
        self.next_audit = lo + h % max(1, hi - lo)

    def _record(self, mode) -> None:
        if mode is None:  # charged the confirmed constant
            cost = self.constant
            self.matmul_flops += cost * self.matmul_share
            self.element_ops += cost * (1 - self.matmul_share)
        else:
            cost = mode.total
            self.counted_steps += 1
            self.matmul_flops += mode.matmul_flops
            self.element_ops += mode.element_ops
            self.max_cost = max(self.max_cost, cost)
            if self.every_step:
                pass
            elif self.constant is None:
                self.first_costs.append(cost)
            elif cost != self.constant:
                self._switch_to_every_step(cost)
            else:
                self.last_verified = self.steps + 1
            if self.steps == self.next_audit:
                self._advance_audit(self.audit_index + 1)
        self.total += cost
        self.steps += 1
        if self.constant is None and not self.every_step and len(self.first_costs) >= self.exact_steps:
            window = self.first_costs[-self.exact_steps:]
            if min(window) == max(window):
                self.constant = cost
                self.matmul_share = mode.matmul_flops / cost if cost else 1.0
                self.last_verified = self.steps
                self._plan_audits()
            elif len(self.first_costs) >= self.max_warmup_steps:
                self.every_step = True
                self.variation = f"no {self.exact_steps} consecutive steps of the first {self.max_warmup_steps} cost the same"

    def _switch_to_every_step(self, cost: float) -> None:
        unaudited = self.steps - self.last_verified
        if cost > self.constant:
            extra = (cost - self.constant) * unaudited
            self.total += extra
            self.element_ops += extra
        self.variation = (f"step {self.steps} cost {cost:.4g}, not the constant {self.constant:.4g}; "
                          f"counted every step from then on, {unaudited} earlier step(s) re-charged")
        self.every_step = True

    @property
    def method(self) -> str:
        if self.every_step:
            return f"counted every step ({self.variation})" if self.variation else "counted every step"
        # audits made, not planned: a stage stopped early (its wall-clock cap) made fewer
        audits = (f"{self.audit_index} random audits" if self.audit_index >= self.planned_audits else
                  f"{self.audit_index} of {self.planned_audits} planned random audits before it stopped")
        return (f"counted {self.counted_steps} of {self.steps} steps "
                f"({len(self.first_costs)} first, {audits}, the last ones), constant cost confirmed")

    # -- checkpointing --------------------------------------------------------------

    def state(self) -> dict:
        return {k: getattr(self, k) for k in _METER_STATE}

    @classmethod
    def from_state(cls, state: dict) -> "StepMeter":
        meter = cls(allowance=state["allowance"])
        for k in _METER_STATE:
            setattr(meter, k, state[k])
        return meter



_METER_STATE = ("allowance", "seed", "exact_steps", "max_warmup_steps", "audit_rate", "min_audits", "total", "matmul_flops",
                "element_ops", "steps", "counted_steps", "constant", "every_step", "max_cost", "last_verified",
                "planned_audits", "audit_start", "audit_block", "audit_index", "next_audit", "variation",
                "first_costs", "matmul_share")


class _MeteredStep:
    def __init__(self, meter: StepMeter):
        self.meter = meter
        self.mode = None

    def __enter__(self):
        if self.meter._must_count():
            from gmbench.flops import OpCostMode

            self.mode = OpCostMode()
            self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self.mode is not None:
            self.mode.__exit__(*exc)
        if exc[0] is None:
            self.meter._record(self.mode)
        return False


def count_flops(fn, *args, limit: float | None = None, what: str = "work", **kwargs):
    """Run ``fn`` with its cost counted (see :mod:`gmbench.flops`); return (result, cost)."""
    from gmbench.flops import count_cost

    out, mode = count_cost(fn, *args, limit=limit, what=what, **kwargs)
    return out, mode.total
