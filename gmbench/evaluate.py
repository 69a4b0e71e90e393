"""Evaluation of a trained method: every sampler over the NFE grid, every metric.

The host draws the samples (timing them) and hands them to each registered
metric that applies to the dataset's modality; model-level metrics (test
likelihood) get the method. A metric or sampler failure becomes an entry with
an ``error`` in the record — it never aborts the rest of the evaluation.
"""

from __future__ import annotations

import time

import torch

from gmbench.budget import Budget, BudgetExceeded
from gmbench.data.base import Dataset
from gmbench.method import Method
from gmbench.metrics.base import EvalContext, Metric, MetricError, check_samples


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampler_grid(method: Method, budget: Budget) -> list[tuple[str, int]]:
    grid = []
    for s in method.samplers:
        nfes = budget.nfe_grid if s.adjustable_nfe else (s.default_nfe,)
        grid += [(s.name, int(nfe)) for nfe in nfes]
    return grid


def evaluate(
    method: Method,
    dataset: Dataset,
    budget: Budget,
    metrics: list[Metric],
    seed: int,
    cache_dir: str | None = None,
    deadline: float | None = None,
) -> tuple[list[dict], list[dict]]:
    """Return (metric entries, sampling costs).

    A metric entry is ``{name, value, sampler, nfe, metric, version}`` plus
    ``label`` (exact/bound) for likelihoods, or ``error`` instead of ``value``.
    """
    device = method.device
    n = budget.eval_samples[dataset.modality]
    ctx = EvalContext(dataset=dataset, n_samples=n, seed=seed, device=device, cache_dir=cache_dir)
    entries: list[dict] = []
    costs: list[dict] = []
    deadline = deadline if deadline is not None else time.monotonic() + budget.eval_timeout_s

    for metric in (m for m in metrics if m.kind == "model"):
        entries += _run_metric(metric, ctx, sampler=None, nfe=None, method=method)

    sample_metrics = [m for m in metrics if m.kind == "samples"]
    for i, (sampler, nfe) in enumerate(sampler_grid(method, budget)):
        if time.monotonic() > deadline:
            raise BudgetExceeded(f"evaluation cap of {budget.eval_timeout_s:g}s reached at sampler {sampler!r}, NFE {nfe}")
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 101 * i + 17)
        _sync(device)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                samples = method.sample(n, sampler, nfe, g)
            _sync(device)
            seconds = time.perf_counter() - t0
            samples = check_samples(samples, dataset)
        except (MetricError, Exception) as exc:  # noqa: BLE001 - a broken sampler is data, not a crash
            entries.append({"name": "*", "sampler": sampler, "nfe": nfe, "value": None, "error": one_line(exc)})
            continue
        costs.append({"sampler": sampler, "nfe": nfe, "seconds": seconds, "samples_per_s": n / max(seconds, 1e-9), "n": n})
        for metric in sample_metrics:
            entries += _run_metric(metric, ctx, sampler=sampler, nfe=nfe, samples=samples.cpu())
    return entries, costs


def _run_metric(metric: Metric, ctx: EvalContext, sampler, nfe, samples=None, method=None) -> list[dict]:
    base = {"metric": metric.name, "version": metric.version, "sampler": sampler, "nfe": nfe}
    try:
        values = metric.compute(ctx, samples=samples, method=method)
    except Exception as exc:  # noqa: BLE001
        return [{**base, "name": metric.name, "value": None, "error": one_line(exc)}]
    out = []
    for name, value in values.items():
        entry = {**base, "name": name, "value": None if value is None else float(value)}
        if metric.kind == "model" and method is not None:
            entry["label"] = method.likelihood
        out.append(entry)
    return out
