"""The host's training loop: stages, optimizers, FLOP budget and clock.

Methods never step an optimizer themselves; this loop does, so every method
is trained under the same rules: the same batch size and FLOP allowance, the
same data order for a given seed, the same NaN check, the same metering —
of everything a method runs while training, hooks included — and the same
checkpoints (:mod:`gmbench.checkpointing`), from which an interrupted run
continues bit-identically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from gmbench import checkpointing, progress
from gmbench.budget import Budget, BudgetExceeded, StepMeter
from gmbench.checkpointing import CheckpointPolicy
from gmbench.conditioning import check_conditioning
from gmbench.evaluate import _ForwardCounter
from gmbench.flops import count_cost
from gmbench.method import Method, MethodError, OptimizerSpec


class TrainingFailed(RuntimeError):
    """Training could not go on (NaN loss, budget too small for one step...)."""


@dataclass
class StageReport:
    """What one stage used: steps, FLOPs (with their parts), wall time, and why it stopped early."""

    name: str
    steps: int = 0
    flops: float = 0.0
    prepare_flops: float = 0.0
    seconds: float = 0.0
    prepare_seconds: float = 0.0
    flops_allowed: float = 0.0
    flops_method: str = ""
    matmul_flops: float = 0.0
    element_ops: float = 0.0
    counted_steps: int = 0
    stopped: str = ""
    final_losses: dict = field(default_factory=dict)
    #: quality-versus-compute points taken in this stage (see ``train``'s ``milestones``)
    curve: list = field(default_factory=list)
    #: forward calls of the method's networks in the stage's steps (``training_step`` and the
    #: losses it yields, ``on_step_end``; preparation and curve points not included), and those
    #: made inside ``loss.backward()`` (an adjoint solve, recomputation): totals over the steps,
    #: counted as the sampling NFE is (``gmbench.evaluate._ForwardCounter``). None: not counted
    #: (a report from before the counts existed, or resumed from such a checkpoint).
    network_calls_forward: int | None = None
    network_calls_backward: int | None = None
    #: what the method says about the stage's preparation (``Method.stage_notes``)
    notes: dict = field(default_factory=dict)

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

    def __init__(self, method: Method, specs: tuple[OptimizerSpec, ...], device: torch.device,
                 calls: _ForwardCounter | None = None):
        self.specs = {s.name: s for s in specs}
        self.optimizers = {s.name: build_optimizer(method, s) for s in specs}
        self.check_every = 1 if device.type == "cpu" else 25  # a NaN check syncs a GPU
        self.calls = calls
        self.backward_calls = 0  # network calls made inside loss.backward() (an adjoint solve)

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
        before = self.calls.calls if self.calls is not None else 0
        loss.backward(retain_graph=retain_graph)
        if self.calls is not None:
            self.backward_calls += self.calls.calls - before
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
    checkpoints: CheckpointPolicy | None = None,
    clock=time.monotonic,
    milestones: Sequence[float] = (),
    on_milestone: Callable[[float], dict] | None = None,
    labels: torch.Tensor | None = None,
) -> list[StageReport]:
    """Train ``method`` on ``train_x`` under ``budget``; return one report per stage run.

    Each stage gets ``budget_share`` of the modality's FLOPs; everything the
    method runs for it — ``on_stage_start``, ``training_step``, the optimizer
    updates, ``on_step_end`` — is metered (:class:`gmbench.budget.StepMeter`).
    A step is taken only if its expected cost still fits the stage's allowance;
    a stage whose audited cost turns out larger than its allowance raises
    :class:`BudgetExceeded`. ``deadline`` (on ``clock``, default
    ``time.monotonic``) is the wall-clock cap, a safety net: reaching it ends
    training where it is, the last report says so in ``stopped``, and the run is
    still evaluated (the runner records it ``incomplete``). With ``checkpoints``
    the state is saved periodically, at stage ends and when stopping, and
    ``checkpoints.resume`` continues from the last checkpoint.

    ``milestones`` are fractions of the whole training allowance (0 < f < 1); when
    the FLOPs spent first reach one, ``on_milestone(f)`` is called between steps and
    its dict is kept, with the fraction, FLOPs and step, in that stage's
    ``StageReport.curve`` (so a resumed run keeps the points it took). It runs
    outside the meter (its work is evaluation, not training), in eval mode, with
    the global RNG state restored afterwards (the run's result does not depend on
    whether a curve was taken), and its wall time extends the deadline. A method
    can only be evaluated once its last stage has started: milestones reached in an
    earlier stage are recorded as skipped (``gmbench run`` says which before training:
    ``gmbench.cli.checks.check_curves``).

    ``labels`` (one per row of ``train_x``) are the class labels a class-conditional method
    trains with (``method.class_conditional``; :mod:`gmbench.conditioning`): each step passes
    the batch's labels as ``training_step(..., labels=...)``. A stage that replaces the
    training data must keep its rows, so that the labels still belong to them.

    The forward calls of the method's networks in each stage's steps are counted, split into
    those of the forward phase and those inside ``loss.backward()``
    (``StageReport.network_calls_forward`` / ``_backward``): hooks that only count, so
    nothing of the training changes.
    """
    counters: list[_ForwardCounter] = []  # one per stage, registered after its preparation
    try:
        return _train(method, train_x, budget, modality, generator, deadline, checkpoints, clock, milestones,
                      on_milestone, counters, labels)
    finally:
        for counter in counters:
            counter.close()


def _train(method, train_x, budget, modality, generator, deadline, checkpoints, clock, milestones, on_milestone,
           counters: list[_ForwardCounter], labels: torch.Tensor | None) -> list[StageReport]:
    stages = method.stages()
    shares = sum(s.budget_share for s in stages)
    if not stages or abs(shares - 1.0) > 1e-6:
        raise MethodError(f"method {method.name!r}: stage budget shares must sum to 1 (got {shares})")
    total_allowed = budget.flops_for(modality)
    batch_size = budget.batch_size[modality]
    cap_s = budget.train_cap_for(modality, method.device.type)
    deadline = deadline if deadline is not None else clock() + cap_s
    method.budget_view = budget.view(modality, {s.name: total_allowed * s.budget_share for s in stages})
    audit_seed = generator.initial_seed()
    check_conditioning(method, labels, train_x.shape[0])
    labels = labels.to(method.device) if method.class_conditional else None
    data, data_replaced = train_x.to(method.device), False
    reports: list[StageReport] = []
    start, resumed = 0, None
    if checkpoints is not None and checkpoints.resume:
        resumed = checkpointing.load(checkpoints.folder)
    if resumed is not None:
        sidecar, tensors = resumed
        method.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
        method.load_training_state(sidecar["method_state"])
        reports = [StageReport(**r) for r in sidecar["reports"]]
        start = sidecar["stage_index"]
        if "stage_data" in tensors:
            data, data_replaced = tensors["stage_data"].to(method.device), True
        if sidecar["meter"] is None:  # saved at a stage boundary
            checkpointing.restore_rng(sidecar, tensors, generator)
            resumed = None
    for index in range(start, len(stages)):
        stage = stages[index]
        method.train(True)
        t0 = clock()
        if resumed is not None:  # continue this stage where the checkpoint left it
            sidecar, tensors = resumed
            report = reports.pop()
            t0 -= report.seconds
            calls = _ForwardCounter(method)
            counters.append(calls)
            apply = _Step(method, stage.optimizers, method.device, calls)
            for name, opt in apply.optimizers.items():
                checkpointing.restore_optimizer(opt, name, sidecar, tensors)
            meter = StepMeter.from_state(sidecar["meter"])
            checkpointing.restore_rng(sidecar, tensors, generator)
            resumed = None
        else:
            report = StageReport(stage.name, flops_allowed=total_allowed * stage.budget_share)
            new_data, cost = count_cost(method.on_stage_start, stage.name, data, generator,
                                        limit=report.flops_allowed, what=f"preparation of stage {stage.name!r}")
            report.prepare_flops, report.prepare_seconds = cost.total, clock() - t0
            if new_data is not None:
                data, data_replaced = new_data.to(method.device), True
            report.notes = _stage_notes(method, stage.name)
            report.network_calls_forward = report.network_calls_backward = 0
            calls = _ForwardCounter(method)  # after the preparation: its calls are not the steps'
            counters.append(calls)
            apply = _Step(method, stage.optimizers, method.device, calls)
            meter = StepMeter(allowance=report.flops_allowed - report.prepare_flops, seed=audit_seed * 1009 + index)
        n = data.shape[0]
        if labels is not None and n != labels.shape[0]:
            raise MethodError(f"stage {stage.name!r} of class-conditional {method.name!r} replaced the {labels.shape[0]} "
                              f"training examples with {n}: the labels no longer belong to them")
        losses: dict = {}
        last_saved, stopped = clock(), ""
        bar = progress.task(f"{method.name} stage {stage.name}", total=report.flops_allowed, unit="FLOP")
        bar.advance(report.prepare_flops + meter.total)  # preparation, and a resumed stage's steps
        spent_before = sum(r.flops for r in reports)
        taken = {p["fraction"] for r in reports + [report] for p in r.curve}
        pending = sorted(f for f in milestones if 0 < f < 1 and f not in taken)
        last_stage = index == len(stages) - 1

        def save(in_stage: bool) -> None:
            report.seconds = clock() - t0
            _fill(report, meter, losses)
            checkpointing.save(
                checkpoints, method=method, optimizers=apply.optimizers if in_stage else {}, generator=generator,
                stage_index=index if in_stage else index + 1, meter_state=meter.state() if in_stage else None,
                reports=[r.to_dict() for r in reports + [report]], stage_data=data if data_replaced else None,
                extra={"stage": stage.name},
            )

        while True:
            if meter.steps and meter.total + meter.next_step_cost > meter.allowance:
                break
            if clock() > deadline:
                stopped = f"wall-clock cap of {cap_s:g}s reached in stage {stage.name!r} after {meter.steps} steps"
                break
            # drawn on the CPU generator so the data order is the same on every device; pinned
            # and non-blocking on a GPU so the copy does not synchronise the stream every step
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator, device="cpu")
            if data.device.type == "cuda":
                idx = idx.pin_memory().to(data.device, non_blocking=True)
            batch = data[idx]
            given = {} if labels is None else {"labels": labels[idx]}
            step = meter.steps
            counted = meter.total
            calls_before, backward_before = calls.calls, apply.backward_calls
            with meter.step():
                losses = apply(method.training_step(stage.name, batch, step, **given), step)
                method.on_step_end(stage.name, step)
            _count_calls(report, calls.calls - calls_before, apply.backward_calls - backward_before)
            bar.advance(meter.total - counted, note=f"step {meter.steps}")
            if meter.steps == 1 and meter.total == 0:
                raise MethodError(
                    f"a step of stage {stage.name!r} counted 0 FLOPs: the FLOP budget needs the step's work "
                    "to run under torch (no numpy or custom kernels the counter cannot see)"
                )
            if meter.steps == 1 and meter.total > meter.allowance:
                raise TrainingFailed(
                    f"one step of stage {stage.name!r} costs {meter.total:.3g} FLOPs, more than its allowance "
                    f"{meter.allowance:.3g}: use a larger budget or a smaller model"
                )
            if meter.over_budget:
                break
            spent = spent_before + report.prepare_flops + meter.total
            while pending and spent >= pending[0] * total_allowed:
                fraction = pending.pop(0)
                point = {"fraction": fraction, "flops": spent, "stage": stage.name, "step": meter.steps}
                if not last_stage or on_milestone is None:
                    point["skipped"] = "the method samples only once its last stage has started"
                else:
                    t_eval = clock()
                    point.update(_milestone(method, on_milestone, fraction))
                    deadline += clock() - t_eval  # evaluation is not training time
                    t0 += clock() - t_eval
                report.curve.append(point)
            if checkpoints is not None and (clock() - last_saved >= checkpoints.every_s or (
                    checkpoints.every_steps and meter.steps % checkpoints.every_steps == 0)):
                save(in_stage=True)
                last_saved = clock()
        bar.close()
        calls.close()
        if meter.over_budget:
            raise BudgetExceeded(
                f"stage {stage.name!r} used {meter.total:.4g} FLOPs (audited), more than its allowance "
                f"{meter.allowance:.4g}: {meter.variation or 'a step cost more than any step before it'}"
            )
        report.stopped = stopped
        report.seconds = clock() - t0
        # facts that accumulate over the steps (e.g. the wall time of work the FLOP meter cannot see)
        report.notes = {**report.notes, **_stage_notes(method, stage.name, end=True)}
        _fill(report, meter, losses)
        if checkpoints is not None:
            save(in_stage=bool(stopped))
        reports.append(report)
        if stopped:
            break
    method.train(False)
    return reports


def _milestone(method: Method, on_milestone: Callable[[float], dict], fraction: float) -> dict:
    """``on_milestone(fraction)`` in eval mode with the RNG state of training untouched."""
    cuda = [method.device.index or 0] if method.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        method.train(False)
        try:
            return dict(on_milestone(fraction))
        finally:
            method.train(True)


def _count_calls(report: StageReport, step_calls: int, backward_calls: int) -> None:
    """Add one step's network calls to the stage's totals (kept None where they were not counted)."""
    if report.network_calls_forward is not None and report.network_calls_backward is not None:
        report.network_calls_forward += step_calls - backward_calls
        report.network_calls_backward += backward_calls


def _stage_notes(method: Method, stage: str, end: bool = False) -> dict:
    """``method.stage_notes(stage)`` (``stage_end_notes`` with ``end``), checked to be a JSON-able
    dict (it goes into the record)."""
    hook = "stage_end_notes" if end else "stage_notes"
    notes = getattr(method, hook)(stage)
    try:
        if not isinstance(notes, dict):
            raise TypeError(f"a {type(notes).__name__}")
        return json.loads(json.dumps(notes, allow_nan=True))
    except (TypeError, ValueError) as exc:
        what = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MethodError(f"{hook}({stage!r}) of {method.name!r} must return a JSON-able dict "
                          f"(numbers, strings, lists, dicts), not {what}") from None


def _fill(report: StageReport, meter: StepMeter, losses: dict) -> None:
    report.steps = meter.steps
    report.flops = meter.total + report.prepare_flops
    report.matmul_flops, report.element_ops = meter.matmul_flops, meter.element_ops
    report.flops_method = meter.method
    report.counted_steps = meter.counted_steps
    report.final_losses = {k: float(v) for k, v in losses.items()}
