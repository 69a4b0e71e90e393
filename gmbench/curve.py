"""Quality against training compute, from one run.

A run evaluates its method at fixed fractions of its training allowance
(``Budget.curve_fractions``, e.g. 1/8, 1/4, 1/2) and once more when training
ends, on a *cheap* protocol: only the dataset's primary metric, at one sampler
setting, on ``Budget.curve_samples`` samples (or, when the primary metric is the
model's likelihood, on that many *validation* examples: a method is never handed a test example
while it trains, or it could train on them). Every point of a run's curve —
the last included — uses that same protocol, so the curve is consistent with
itself; its last point is *not* the board's headline number (which uses the full
evaluation) and the two are never mixed.

The sampler setting is the method's first sampler at the middle of the budget's
NFE grid (its own NFE for a fixed-NFE sampler): one setting that every point of
every run of the method shares. The training loop calls the evaluator between
steps, outside the FLOP meter, in eval mode, with the RNG state of training
restored afterwards (``gmbench.training.train``), so taking a curve does not
change the run's result. The points are stored in the record's ``curve``:
``{fraction, flops, stage, step, metric, value, sampler, nfe, n, seconds}``, or
``skipped``/``error`` with why.

Because a constant learning rate after warm-up is the contract's only schedule
(``OptimizerSpec``), the model at a fraction ``f`` of the allowance is the model a
run with ``f`` times the budget would have trained: the curve answers "which
method is best at *my* compute" for computes below the budget's, from one run.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch

from gmbench.conditioning import draw_samples
from gmbench.evaluate import _run_metric, check_samples, one_line
from gmbench.metrics.base import EvalContext, Metric
from gmbench.method import Method

CURVE_VERSION = "2"  # 2: likelihood points on the validation split (1: on test)


def curve_setting(method: Method, budget) -> tuple[str, int]:
    """(sampler, NFE) every point of a curve is sampled at."""
    first = method.samplers[0]
    if not first.adjustable_nfe:
        return first.name, int(first.default_nfe)
    grid = sorted(budget.nfe_grid)
    return first.name, int(grid[(len(grid) - 1) // 2])


def fractions_before_last_stage(method: Method, fractions) -> tuple[list[float], float, str]:
    """The curve fractions a run of ``method`` reaches before its last stage starts, which the
    training loop records as skipped (a method is sampled only once its last stage has
    started), with the fraction of the training FLOPs where that stage starts and its name.

    Known before training from ``stages()``: the earlier stages together spend at most their
    shares. (A fraction at exactly that start is taken at the last stage's first step.)
    """
    stages = method.stages()
    start = sum(float(s.budget_share) for s in stages[:-1])
    early = [float(f) for f in fractions if 0 < f < 1 and f < start - 1e-9]
    return early, start, stages[-1].name if stages else ""


def primary_metric_of(metrics: list[Metric], output: str) -> Metric | None:
    """The metric (of those that apply) that produces ``output``."""
    for metric in metrics:
        if any(o.name == output for o in metric.outputs):
            return metric
    return None


def curve_evaluator(method: Method, dataset, budget, metrics: list[Metric], ctx: EvalContext,
                    seed: int) -> Callable[[float], dict]:
    """A function ``fraction -> point`` scoring ``method`` as it is now on the cheap protocol."""
    modality = dataset.spec().modality
    output = dataset.primary_metric
    metric = primary_metric_of(metrics, output)
    n = int(budget.curve_samples.get(modality, 256))
    sampler, nfe = curve_setting(method, budget)
    val_ctx = ctx.for_split("val")

    def evaluate_point(fraction: float) -> dict:
        t0 = time.monotonic()
        point = {"metric": output, "version": CURVE_VERSION, "n": n}
        if metric is None:
            point["skipped"] = f"no installed metric produces {output!r}"
            return point
        try:
            if metric.kind == "model":
                if method.likelihood == "none":
                    point["skipped"] = f"{method.name} gives no likelihood"
                    return point
                cheap = copy.copy(metric)
                cheap.max_examples = min(n, getattr(metric, "max_examples", n) or n)
                entries = _run_metric(cheap, val_ctx, sampler=None, nfe=None, method=method)
            else:
                g = torch.Generator(device=method.device).manual_seed(seed * 1_000_003 + 7919)
                with torch.no_grad():
                    samples = check_samples(draw_samples(method, n, sampler, nfe, g), dataset).cpu()
                entries = _run_metric(metric, ctx, sampler=sampler, nfe=nfe, samples=samples)
                point.update(sampler=sampler, nfe=nfe)
        except Exception as exc:  # noqa: BLE001 - a failed point is data; training goes on
            point["error"] = one_line(exc)
            return point
        finally:
            point["seconds"] = time.monotonic() - t0
        entry = next((e for e in entries if e.get("name") == output), None)
        if entry is None or entry.get("value") is None:
            point["error"] = (entry or {}).get("error") or (entry or {}).get("skipped") or f"{output} not produced"
        else:
            point["value"] = float(entry["value"])
        return point

    return evaluate_point


def record_curve(stages: list[dict], final_point: dict, flops: float) -> list[dict]:
    """The record's ``curve``: the stages' points in order, then the end of training."""
    points = [p for s in stages for p in s.get("curve", [])]
    end = {"fraction": 1.0, "flops": flops, "stage": stages[-1]["name"] if stages else "",
           "step": stages[-1]["steps"] if stages else 0, **final_point}
    return points + [end]
