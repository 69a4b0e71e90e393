"""Evaluation of a trained method: every sampler over the NFE grid, every metric.

The host draws the samples (timing them) and hands them to each registered
metric that applies to the dataset's modality; model-level metrics (test
likelihood) get the method. A metric or sampler failure becomes an entry with
an ``error`` in the record — it never aborts the rest of the evaluation — and
a metric that cannot run here (missing optional weights) an entry with a
``skipped`` note.

Sampling cost, per sampler and NFE (``cost.sampling`` in the record):

* a warm-up call of one sample (lazy initialisation, kernel selection, caches)
  that is not timed;
* ``latency_s``: wall time of one more single-sample call;
* ``seconds`` and ``samples_per_s``: the call that draws the ``n`` evaluation
  samples (the method batches as it likes);
* ``cuda_peak_mb``: peak CUDA memory allocated during that call (GPU only).

On a GPU every timer is closed by ``torch.cuda.synchronize``. Warm-up and
latency calls use their own generator, so the evaluation samples are the same
as without them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch

from gmbench.budget import Budget
from gmbench.records import SCHEMA_VERSION
from gmbench.data.base import Dataset
from gmbench.method import Method
from gmbench.metrics.base import EvalContext, Metric, MetricSkipped, check_samples

DEFAULT_SAMPLING_PRECISION = "float32"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampler_grid(method: Method, budget: Budget) -> list[tuple[str, int]]:
    """(sampler, NFE) settings to evaluate, cheapest first across samplers, so an
    evaluation cut short by its cap still compares every sampler at low NFE."""
    grid = []
    for order, s in enumerate(method.samplers):
        nfes = budget.nfe_grid if s.adjustable_nfe else (s.default_nfe,)
        grid += [(int(nfe), order, s.name) for nfe in nfes]
    return [(name, nfe) for nfe, _, name in sorted(grid)]


def sampling_precision(method: Method) -> str:
    """The float precision a method samples in (its ``sampling_precision`` attribute, default float32)."""
    return str(getattr(method, "sampling_precision", None) or DEFAULT_SAMPLING_PRECISION)


def eval_context(
    dataset: Dataset,
    budget: Budget,
    seed: int,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    extractors=None,
    options: dict | None = None,
) -> EvalContext:
    """The context metrics see; ``extractors`` is the feature-extractor registry (or a dict)."""
    if extractors is not None and not isinstance(extractors, Mapping):
        extractors = {name: extractors.get(name) for name in extractors.names()}
    return EvalContext(
        dataset=dataset,
        n_samples=budget.eval_samples[dataset.modality],
        seed=seed,
        device=torch.device(device),
        cache_dir=cache_dir,
        options=dict(options or {}),
        budget=budget,
        extractors=dict(extractors) if extractors is not None else None,
    )


def metric_fingerprint_fields(metrics: list[Metric], ctx: EvalContext) -> dict:
    """``{metric: {"version": v, **metric.fingerprint_fields(ctx)}}`` for the record's fingerprint."""
    out = {}
    for m in metrics:
        try:
            extra = m.fingerprint_fields(ctx)
        except Exception as exc:  # noqa: BLE001 - a broken metric plugin still gets a fingerprint
            extra = {"fingerprint_error": one_line(exc)}
        out[m.name] = {"version": m.version, **extra}
    return out


def evaluate(
    method: Method,
    dataset: Dataset,
    budget: Budget,
    metrics: list[Metric],
    seed: int,
    cache_dir: str | None = None,
    deadline: float | None = None,
    ctx: EvalContext | None = None,
) -> tuple[list[dict], list[dict]]:
    """Return (metric entries, sampling costs).

    A metric entry is ``{name, value, sampler, nfe, metric, version, seconds}``
    plus ``label`` (exact/bound) for model metrics and ``sampling_precision``
    for sample metrics; ``error`` or ``skipped`` replace a value that could not
    be computed. ``seconds`` is the time of the metric's whole group (shared by
    its outputs).
    """
    device = method.device
    if ctx is None:
        ctx = eval_context(dataset, budget, seed, device, cache_dir)
    n = ctx.n_samples
    precision = sampling_precision(method)
    entries: list[dict] = []
    costs: list[dict] = []
    deadline = deadline if deadline is not None else time.monotonic() + budget.eval_cap_s

    for metric in (m for m in metrics if m.kind == "model"):
        entries += _run_metric(metric, ctx, sampler=None, nfe=None, method=method)

    sample_metrics = [m for m in metrics if m.kind == "samples"]
    for i, (sampler, nfe) in enumerate(sampler_grid(method, budget)):
        if time.monotonic() > deadline:
            # Keep what was measured; the settings not reached are recorded as such
            # (a run none of whose settings was reached fails in the runner).
            entries.append({"name": "*", "sampler": sampler, "nfe": nfe, "value": None,
                            "error": f"not evaluated: evaluation cap of {budget.eval_cap_s:g}s reached"})
            continue
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 101 * i + 17)
        try:
            cost = _timed_sampling(method, sampler, nfe, n, g, seed * 1_000_003 + 101 * i + 53)
            samples = check_samples(cost.pop("samples"), dataset)
        except Exception as exc:  # noqa: BLE001 - a broken sampler is data, not a crash
            entries.append({"name": "*", "sampler": sampler, "nfe": nfe, "value": None, "error": one_line(exc)})
            continue
        cost["sampling_precision"] = precision
        costs.append(cost)
        samples = samples.cpu()
        for metric in sample_metrics:
            for e in _run_metric(metric, ctx, sampler=sampler, nfe=nfe, samples=samples):
                e["sampling_precision"] = precision
                entries.append(e)
    return entries, costs


def _timed_sampling(method: Method, sampler: str, nfe: int, n: int, g: torch.Generator, aux_seed: int) -> dict:
    device = method.device
    aux = torch.Generator(device=device).manual_seed(aux_seed)
    with torch.no_grad():
        _sync(device)
        method.sample(1, sampler, nfe, aux)  # warm-up, not timed
        _sync(device)
        t0 = time.perf_counter()
        method.sample(1, sampler, nfe, aux)
        _sync(device)
        latency = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        samples = method.sample(n, sampler, nfe, g)
        _sync(device)
        seconds = time.perf_counter() - t0
    cost = {
        "sampler": sampler,
        "nfe": nfe,
        "n": n,
        "seconds": seconds,
        "samples_per_s": n / max(seconds, 1e-9),
        "latency_s": latency,
        "samples": samples,
    }
    if device.type == "cuda":
        cost["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return cost


def _run_metric(metric: Metric, ctx: EvalContext, sampler, nfe, samples=None, method=None) -> list[dict]:
    base = {"metric": metric.name, "version": metric.version, "sampler": sampler, "nfe": nfe}
    t0 = time.perf_counter()
    try:
        values = metric.compute(ctx, samples=samples, method=method)
    except MetricSkipped as exc:
        return [{**base, "name": metric.name, "value": None, "skipped": str(exc)}]
    except Exception as exc:  # noqa: BLE001
        return [{**base, "name": metric.name, "value": None, "error": one_line(exc), "seconds": time.perf_counter() - t0}]
    seconds = time.perf_counter() - t0
    out = []
    for name, value in values.items():
        value = None if value is None else float(value)
        entry = {**base, "name": name, "value": value, "seconds": seconds}
        if value is not None and not math.isfinite(value):  # JSON records hold no NaN/inf
            entry.update(value=None, error=f"{metric.name} returned {value} for {name}")
        if metric.kind == "model" and method is not None:
            entry["label"] = method.likelihood
        out.append(entry)
    return out


def protocol_fields(dataset, budget, metrics, ctx) -> dict:
    """The fingerprint fields of an fp32 run on ``dataset`` at ``budget``: everything
    that makes its metric values comparable (trained, loaded and external runs alike)."""
    return {
        **dataset.fingerprint_fields(),
        **budget.fingerprint_fields(dataset.modality),
        "metrics": metric_fingerprint_fields(metrics, ctx),
        "schema": SCHEMA_VERSION,
    }
