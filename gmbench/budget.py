"""Compute budgets: the fairness rule of a comparison, and the FLOP meter.

A budget fixes, per data modality, the training FLOPs (forward and backward,
every network and stage, counted with ``torch.utils.flop_counter``), the
batch size, and for all runs a wall-clock cap (a safety net: FLOPs are the
rule), the model-size preset, the evaluation sample count and the NFE grid.

``FlopCounterMode`` counts matrix products only (not elementwise work or CPU
bookkeeping such as an OT assignment), so records state wall time beside FLOPs.
Counting every step under the dispatch mode would cost more than the 3% host
overhead we allow, so :class:`StepFlopMeter` counts the first steps of a stage
exactly and charges later steps the measured cost while it stays constant —
re-checking periodically, and counting every step if it ever varies.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from torch.utils.flop_counter import FlopCounterMode

from gmbench.hookspecs import hookimpl


@dataclass(frozen=True)
class Budget:
    """A named compute budget.

    Attributes:
        name: ``smoke``, ``small``, ``standard``, ``large`` or a plugin's own.
        train_flops: training FLOPs allowed, per modality.
        batch_size: training batch size, per modality.
        wall_clock_s: hard cap on one run's training time, in seconds.
        model_size: backbone preset (``tiny``/``small``/``base``/``large``).
        eval_samples: samples drawn per (sampler, NFE) for metrics, per modality.
        nfe_grid: NFE values tried for samplers whose NFE is adjustable.
        eval_timeout_s: cap on one run's evaluation time, in seconds.
    """

    name: str
    train_flops: dict
    batch_size: dict
    wall_clock_s: float
    model_size: str
    eval_samples: dict
    nfe_grid: tuple[int, ...]
    eval_timeout_s: float = 600.0
    description: str = ""

    def flops_for(self, modality: str) -> float:
        return float(self.train_flops[modality])

    @property
    def train_cap_s(self) -> float:
        """The training wall-clock cap in force: ``wall_clock_s`` times :func:`cap_scale`."""
        return float(self.wall_clock_s) * cap_scale()

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
    wall_clock_s=120,
    model_size="tiny",
    eval_samples={"toy2d": 1000, "image": 256, "text": 64},
    nfe_grid=(10, 50),
    eval_timeout_s=120,
    description="seconds per run on a CPU: tests and CI",
)
SMALL = Budget(
    name="small",
    train_flops={"toy2d": 1.0e12, "image": 4.0e12, "text": 3.0e12},
    batch_size={"toy2d": 256, "image": 64, "text": 32},
    wall_clock_s=600,
    model_size="small",
    eval_samples={"toy2d": 2000, "image": 1000, "text": 256},
    nfe_grid=(10, 20, 50, 100),
    eval_timeout_s=900,
    description="default of `gmbench run`: the whole suite in minutes on a 2-core CPU",
)
STANDARD = Budget(
    name="standard",
    train_flops={"toy2d": 1.0e13, "image": 1.0e15, "text": 1.0e15},
    batch_size={"toy2d": 512, "image": 128, "text": 128},
    wall_clock_s=4 * 3600,
    model_size="base",
    eval_samples={"toy2d": 10000, "image": 10000, "text": 1000},
    nfe_grid=(10, 20, 50, 100, 250, 1000),
    eval_timeout_s=3600,
    description="one GPU, hours for the suite",
)
LARGE = Budget(
    name="large",
    train_flops={"toy2d": 1.0e14, "image": 2.0e16, "text": 2.0e16},
    batch_size={"toy2d": 1024, "image": 256, "text": 256},
    wall_clock_s=24 * 3600,
    model_size="large",
    eval_samples={"toy2d": 50000, "image": 50000, "text": 5000},
    nfe_grid=(10, 20, 50, 100, 250, 1000),
    eval_timeout_s=4 * 3600,
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
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${CAP_SCALE_ENV}={raw!r}: give a positive number, e.g. 4") from None
    if not value > 0:
        raise ValueError(f"${CAP_SCALE_ENV}={raw!r}: give a positive number, e.g. 4")
    return value


@hookimpl
def gmbench_register_budgets(register):
    for b in (SMOKE, SMALL, STANDARD, LARGE):
        register(b)


class BudgetExceeded(RuntimeError):
    """Raised when a run's wall-clock cap is hit (the run becomes a failed record)."""


@dataclass
class StepFlopMeter:
    """Counts FLOPs of training steps cheaply (see module docstring).

    Use ``with meter.step(): ...`` around each step; ``meter.total`` is the
    running total and ``meter.next_step_cost`` the expected cost of one more.
    """

    exact_steps: int = 3
    recheck_every: int = 1000
    total: float = 0.0
    steps: int = 0
    counted_steps: int = 0
    _costs: list = field(default_factory=list)
    _constant: float | None = None
    _varies: bool = False

    def _must_count(self) -> bool:
        return self._constant is None or self._varies or self.steps % self.recheck_every == 0

    def step(self):
        return _MeteredStep(self)

    @property
    def next_step_cost(self) -> float:
        if self._costs:
            return max(self._costs[-self.exact_steps :]) if self._varies else (self._constant or self._costs[-1])
        return 0.0

    def _record(self, flops: float | None) -> None:
        if flops is None:
            flops = self._constant or 0.0
        else:
            self.counted_steps += 1
            self._costs.append(flops)
            if self._constant is not None and flops != self._constant:
                self._varies = True
            if self._constant is None and len(self._costs) >= self.exact_steps:
                window = self._costs[-self.exact_steps :]
                if min(window) == max(window):
                    self._constant = window[0]
                else:
                    self._varies = True
        self.total += flops
        self.steps += 1

    @property
    def method(self) -> str:
        if self._varies:
            return "counted every step"
        return f"counted {self.counted_steps} of {self.steps} steps, constant cost extrapolated"


class _MeteredStep:
    def __init__(self, meter: StepFlopMeter):
        self.meter = meter
        self.counter: FlopCounterMode | None = None

    def __enter__(self):
        if self.meter._must_count():
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        if self.counter is not None:
            self.counter.__exit__(*exc)
            if exc[0] is None:
                self.meter._record(float(self.counter.get_total_flops()))
        elif exc[0] is None:
            self.meter._record(None)
        return False


def count_flops(fn, *args, **kwargs):
    """Run ``fn`` under a FLOP counter; return (result, flops)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return out, float(counter.get_total_flops())
