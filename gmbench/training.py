"""The host's training loop: stages, optimizers, FLOP budget and clock.

Methods never step an optimizer themselves; this loop does, so every method
is trained under the same rules: the same batch size and FLOP allowance, the
same data order for a given seed, the same NaN check, the same metering.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from gmbench.budget import Budget, BudgetExceeded, StepFlopMeter, count_flops
from gmbench.method import Method, MethodError, OptimizerSpec


class TrainingFailed(RuntimeError):
    """Training could not go on (NaN loss, budget too small for one step...)."""


@dataclass
class StageReport:
    name: str
    steps: int = 0
    flops: float = 0.0
    prepare_flops: float = 0.0
    seconds: float = 0.0
    flops_allowed: float = 0.0
    flops_method: str = ""
    final_losses: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_optimizer(method: Method, spec: OptimizerSpec) -> torch.optim.Optimizer:
    modules = method.modules()
    params = []
    for mname in spec.modules:
        if mname not in modules:
            raise MethodError(f"optimizer {spec.name!r} names unknown module {mname!r} (modules: {', '.join(modules)})")
        params += [p for p in modules[mname].parameters() if p.requires_grad]
    if not params:
        raise MethodError(f"optimizer {spec.name!r} has no trainable parameters")
    cls = torch.optim.AdamW if spec.weight_decay else torch.optim.Adam
    return cls(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


class _Step:
    """Applies the losses of one ``training_step`` to the stage's optimizers."""

    def __init__(self, method: Method, specs: tuple[OptimizerSpec, ...], device: torch.device):
        self.specs = {s.name: s for s in specs}
        self.optimizers = {s.name: build_optimizer(method, s) for s in specs}
        self.check_every = 1 if device.type == "cpu" else 25  # a NaN check syncs a GPU

    def _set_lr(self, name: str, step: int) -> None:
        spec = self.specs[name]
        if spec.warmup_steps:
            lr = spec.lr * min(1.0, (step + 1) / spec.warmup_steps)
            for group in self.optimizers[name].param_groups:
                group["lr"] = lr

    def apply_one(self, name: str, loss: torch.Tensor, step: int, retain_graph: bool, losses: dict) -> None:
        if name not in self.optimizers:
            raise MethodError(f"training_step returned a loss for unknown optimizer {name!r} (stage has {', '.join(self.optimizers)})")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise MethodError(f"loss for optimizer {name!r} must be a scalar tensor")
        opt = self.optimizers[name]
        self._set_lr(name, step)
        opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        clip = self.specs[name].grad_clip
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        opt.step()
        losses[name] = loss.detach()

    def __call__(self, result, step: int) -> dict:
        losses: dict = {}
        if isinstance(result, Mapping):
            items = list(result.items())
            for i, (name, loss) in enumerate(items):
                self.apply_one(name, loss, step, retain_graph=i < len(items) - 1, losses=losses)
        else:  # generator: step each optimizer before the next loss is computed
            for name, loss in result:
                self.apply_one(name, loss, step, retain_graph=False, losses=losses)
        if not losses:
            raise MethodError("training_step returned no loss")
        if step % self.check_every == 0:
            for name, loss in losses.items():
                if not math.isfinite(float(loss)):
                    raise TrainingFailed(f"loss of optimizer {name!r} is {float(loss)} at step {step}")
        return losses


def train(
    method: Method,
    train_x: torch.Tensor,
    budget: Budget,
    modality: str,
    generator: torch.Generator,
    deadline: float | None = None,
) -> list[StageReport]:
    """Train ``method`` on ``train_x`` under ``budget``; return one report per stage.

    Each stage gets ``budget_share`` of the modality's FLOPs. A step is only
    taken if its (measured) cost still fits the stage's allowance, so the total
    never exceeds the budget. ``deadline`` (``time.monotonic()``) is the
    wall-clock cap: passing it raises :class:`BudgetExceeded`.
    """
    stages = method.stages()
    shares = sum(s.budget_share for s in stages)
    if not stages or abs(shares - 1.0) > 1e-6:
        raise MethodError(f"method {method.name!r}: stage budget shares must sum to 1 (got {shares})")
    total_allowed = budget.flops_for(modality)
    batch_size = budget.batch_size[modality]
    deadline = deadline if deadline is not None else time.monotonic() + budget.train_cap_s
    data = train_x.to(method.device)
    reports = []
    for stage in stages:
        report = StageReport(stage.name, flops_allowed=total_allowed * stage.budget_share)
        t0 = time.perf_counter()
        method.train(True)
        new_data, report.prepare_flops = count_flops(method.on_stage_start, stage.name, data, generator)
        if new_data is not None:
            data = new_data.to(method.device)
        apply = _Step(method, stage.optimizers, method.device)
        meter = StepFlopMeter()
        allowance = report.flops_allowed - report.prepare_flops
        n = data.shape[0]
        losses: dict = {}
        while True:
            if meter.steps and meter.total + meter.next_step_cost > allowance:
                break
            if time.monotonic() > deadline:
                raise BudgetExceeded(
                    f"wall-clock cap of {budget.train_cap_s:g}s reached in stage {stage.name!r} after {meter.steps} steps"
                )
            # drawn on the CPU generator so the data order is the same on every device; pinned
            # and non-blocking on a GPU so the copy does not synchronise the stream every step
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator, device="cpu")
            if data.device.type == "cuda":
                idx = idx.pin_memory().to(data.device, non_blocking=True)
            batch = data[idx]
            with meter.step():
                losses = apply(method.training_step(stage.name, batch, meter.steps), meter.steps)
            method.on_step_end(stage.name, meter.steps - 1)
            if meter.steps == 1 and meter.total == 0:
                raise MethodError(
                    f"a step of stage {stage.name!r} counted 0 FLOPs: the FLOP budget needs the step's matrix "
                    "products to run under torch (no numpy or custom kernels the counter cannot see)"
                )
            if meter.steps == 1 and meter.total > allowance:
                raise TrainingFailed(
                    f"one step of stage {stage.name!r} costs {meter.total:.3g} FLOPs, more than its allowance "
                    f"{allowance:.3g}: use a larger budget or a smaller model"
                )
        report.steps = meter.steps
        report.flops = meter.total + report.prepare_flops
        report.flops_method = meter.method
        report.final_losses = {k: float(v) for k, v in losses.items()}
        report.seconds = time.perf_counter() - t0
        reports.append(report)
    method.train(False)
    return reports
