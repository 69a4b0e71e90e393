"""Evaluation of a trained method: every sampler over the NFE grid, every metric.

The host draws the samples (timing them) and hands them to each registered
metric that applies to the dataset's modality; model-level metrics (test
likelihood) get the method, after every sample has been drawn: they hand the method test
examples, which it must not be able to return as samples. A metric or sampler failure becomes an entry with
an ``error`` in the record — it never aborts the rest of the evaluation — and
a metric that cannot run here (missing optional weights) an entry with a
``skipped`` note.

Sampling cost, per sampler and NFE (``cost.sampling`` in the record):

* a warm-up call of one sample (lazy initialisation, kernel selection, caches)
  that is not timed, during which the host counts the forward calls of the
  method's networks (``nfe_counted``, the NFE of one sample): more than the
  sampler declares (``nfe * calls_per_step``) fails the run;
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
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from gmbench import progress
from gmbench.budget import Budget
from gmbench.conditioning import draw_samples
from gmbench.records import SCHEMA_VERSION
from gmbench.data.base import Dataset
from gmbench.method import Method
from gmbench.metrics.base import EvalContext, Metric, MetricSkipped, check_samples

if TYPE_CHECKING:
    from gmbench.eval_journal import EvalJournal

DEFAULT_SAMPLING_PRECISION = "float32"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def synchronize(device: torch.device) -> None:
    """Wait for the work already queued on ``device`` (a GPU runs asynchronously), so that a timer
    started or stopped next measures only what follows or precedes it. A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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


#: share of the evaluation cap held back for the model-level metrics (the likelihood), which
#: run after the sampler grid: the grid stops that much before the cap, so neither starves the other
MODEL_METRICS_SHARE = 0.35


def evaluate(
    method: Method,
    dataset: Dataset,
    budget: Budget,
    metrics: list[Metric],
    seed: int,
    cache_dir: str | None = None,
    deadline: float | None = None,
    ctx: EvalContext | None = None,
    profile: dict | None = None,
    journal: "EvalJournal | None" = None,
) -> tuple[list[dict], list[dict]]:
    """Return (metric entries, sampling costs).

    A metric entry is ``{name, value, sampler, nfe, metric, version, seconds}``
    plus ``split`` (``test``, or ``val`` for the copy scored against the
    validation split, which boards choose settings on), ``nfe_counted`` and
    ``sampling_precision`` for sample metrics, and ``label`` (exact / bound /
    estimate) with ``stderr`` for the model's likelihood; ``error`` or
    ``skipped`` replace a value that could not be computed. ``seconds`` is the
    time of the metric's whole group (shared by its outputs). ``profile``, if
    given, receives the seconds spent per phase, and in ``likelihood_calls`` the forward
    calls of the method's networks while the model-level metrics (the likelihood) ran, counted
    as the sampling NFE is. ``journal``
    (:class:`gmbench.eval_journal.EvalJournal`) keeps each finished part, and gives back the
    parts an interrupted attempt with the same weights finished (their measured seconds
    count towards the cap and the profile).
    """
    device = method.device
    if ctx is None:
        ctx = eval_context(dataset, budget, seed, device, cache_dir)
    val_ctx = ctx.for_split("val")
    n = ctx.n_samples
    precision = sampling_precision(method)
    entries: list[dict] = []
    costs: list[dict] = []
    profile = profile if profile is not None else {}
    # the parts an interrupted attempt finished have already spent their share of the cap
    start = time.monotonic() - (journal.elapsed_s if journal is not None else 0.0)
    cap = budget.eval_cap_s
    deadline = deadline if deadline is not None else start + cap

    grid = sampler_grid(method, budget)
    model_metrics = [m for m in metrics if m.kind == "model"]
    # The samples come first and the likelihood last: a model metric hands the method test
    # examples, so no sample is drawn after the method has seen one (a method that kept them could
    # otherwise return them as samples). The likelihood's share of the cap is held back from
    # the sampler grid, so neither part can starve the other.
    reserve = MODEL_METRICS_SHARE * cap if model_metrics and method.likelihood != "none" else 0.0
    bar = progress.task(f"{method.name} eval", total=len(model_metrics) + len(grid), unit="setting")
    sample_metrics = [m for m in metrics if m.kind == "samples"]
    profile.setdefault("sampling_s", 0.0)
    profile.setdefault("sample_metrics_s", 0.0)
    try:
        _sample_and_score(method, dataset, grid, sample_metrics, ctx, val_ctx, n, seed, precision,
                          deadline - reserve, cap, entries, costs, profile, bar, journal)
        done = journal.take_model() if journal is not None else None
        if done is not None:  # computed by an interrupted attempt with the same weights
            entries += done["entries"]
            profile["likelihood_s"] = float(done["seconds"])
            if done.get("calls") is not None:  # journals written before the count have none
                profile["likelihood_calls"] = int(done["calls"])
            bar.advance(len(model_metrics), note="model metrics (resumed)")
        else:
            t0 = time.monotonic()
            model_ctx = replace(ctx, deadline=deadline)
            model_entries: list[dict] = []
            calls = _ForwardCounter(method)
            try:
                for metric in model_metrics:
                    model_entries += _run_metric(metric, model_ctx, sampler=None, nfe=None, method=method)
                    bar.advance(note=metric.name)
            finally:
                calls.close()
            profile["likelihood_s"] = time.monotonic() - t0
            profile["likelihood_calls"] = calls.calls
            entries += model_entries
            if journal is not None:
                journal.record_model(model_entries, profile["likelihood_s"], calls.calls)
    finally:
        bar.close()
    return entries, costs


def _sample_and_score(method, dataset, grid, sample_metrics, ctx, val_ctx, n, seed, precision, deadline, cap,
                      entries, costs, profile, bar, journal=None) -> None:
    """Each (sampler, NFE) setting: sample with counted cost, then every sample metric on test and val."""
    device = method.device
    for i, (sampler, nfe) in enumerate(grid):
        bar.advance(1 if i else 0, note=f"{sampler}@{nfe}")  # the previous setting is done, however it ended
        done = journal.take_cell(sampler, nfe) if journal is not None else None
        if done is not None:  # finished by an interrupted attempt with the same weights
            entries += done["entries"]
            if done["cost"] is not None:
                costs.append(done["cost"])
            profile["sampling_s"] += float(done["sampling_s"])
            profile["sample_metrics_s"] += float(done["metrics_s"])
            continue
        if time.monotonic() > deadline:
            # Keep what was measured; the settings not reached are recorded as such
            # (a run none of whose settings was reached fails in the runner).
            entries.append({"name": "*", "sampler": sampler, "nfe": nfe, "value": None,
                            "error": f"not evaluated: evaluation cap of {cap:g}s reached"})
            continue
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 101 * i + 17)
        t0 = time.monotonic()
        try:
            cost = _timed_sampling(method, sampler, nfe, n, g, seed * 1_000_003 + 101 * i + 53)
            samples = check_samples(cost.pop("samples"), dataset)
        except NFEMismatch:
            raise  # the run misreports its cost: not a result to show
        except Exception as exc:  # noqa: BLE001 - a broken sampler is data, not a crash
            failed = [{"name": "*", "sampler": sampler, "nfe": nfe, "value": None, "error": one_line(exc)}]
            entries += failed
            profile["sampling_s"] += time.monotonic() - t0
            continue  # not journaled: a resumed attempt tries it again
        sampling_s = time.monotonic() - t0
        profile["sampling_s"] += sampling_s
        cost["sampling_precision"] = precision
        costs.append(cost)
        samples = samples.cpu()
        t0 = time.monotonic()
        scored = []
        for metric in sample_metrics:
            for split_ctx in (ctx, val_ctx):
                for e in _run_metric(metric, split_ctx, sampler=sampler, nfe=nfe, samples=samples):
                    e["sampling_precision"] = precision
                    e["nfe_counted"] = cost["nfe_counted"]
                    scored.append(e)
        entries += scored
        metrics_s = time.monotonic() - t0
        profile["sample_metrics_s"] += metrics_s
        if journal is not None:
            journal.record_cell(sampler, nfe, scored, cost, sampling_s, metrics_s)
    if grid:
        bar.advance()


class NFEMismatch(RuntimeError):
    """A sampler ran more network evaluations than it declares (one line)."""


class _ForwardCounter:
    """Counts forward calls of a method's networks (the modules ``modules()`` returns).

    Given the :class:`~gmbench.flops.OpCostMode` the call runs under, it also sums the FLOPs
    spent inside those calls (outermost call only, when one listed network runs another), so
    that the sampler's work outside its counted networks is the rest.
    """

    def __init__(self, method: Method, cost=None):
        self.calls = 0
        self.network_flops = 0.0
        self.cost = cost
        self._depth = 0
        self._start = 0.0
        self.handles = []
        seen = set()
        for module in method.modules().values():
            if id(module) not in seen:
                seen.add(id(module))
                self.handles.append(module.register_forward_pre_hook(self._enter))
                # always_call: a call that raises (and is caught by the sampler) still ends
                self.handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, module, args):
        if self._depth == 0:  # a listed network run inside another listed one is part of its call
            self.calls += 1
            if self.cost is not None:
                self._start = self.cost.total
        self._depth += 1

    def _leave(self, module, args, output):
        self._depth -= 1
        if self._depth == 0 and self.cost is not None:
            self.network_flops += self.cost.total - self._start

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class UncountedWork(NFEMismatch):
    """A sampler did most of its work outside the networks whose calls are counted (one line)."""


# A sampler's own arithmetic (update rules, noise, solver error norms, a softmax over the
# vocabulary) is far below one network call: measured on every built-in sampler it is at
# most 1.1% of the counted networks' FLOPs (docs/integrity.md). Work outside the counted networks
# above this share plus a small allowance means a network ran without being counted
# (``net.forward(x)``, submodules one by one, a copy outside ``modules()``), which would put a
# smaller NFE than the true one on the board.
UNCOUNTED_SHARE = 0.1
# FLOPs per value of the sample: what a sampler without any network may spend (drawing
# noise, a softmax over a vocabulary per token); a network call costs far more per value
# for every built-in method.
UNCOUNTED_PER_VALUE = 1000


def sampling_audit(method: Method, sampler: str, nfe: int, generator: torch.Generator) -> dict:
    """Run ``method.sample(1, sampler, nfe)`` under the FLOP counter and the call counter.

    Returns ``{"calls", "flops", "network_flops", "values"}``: the forward calls of the method's
    networks (the NFE of one sample), every FLOP of the call, the FLOPs inside those network
    calls and in autograd's backward passes (a sampler's gradients go through its networks),
    and the number of values in the sample (None when it is not a tensor).
    """
    from gmbench.flops import OpCostMode

    cost = OpCostMode(what="sampling", audit=True)  # a row picked from a bank costs the row
    counter = _ForwardCounter(method, cost)
    try:
        with cost:
            sample = draw_samples(method, 1, sampler, nfe, generator)
    finally:
        counter.close()
    values = sample.numel() if isinstance(sample, torch.Tensor) else None  # check_samples says what is wrong
    return {"calls": counter.calls, "flops": cost.total, "network_flops": counter.network_flops + cost.backward,
            "values": values}


def counted_nfe(method: Method, sampler: str, nfe: int, generator: torch.Generator) -> int:
    """Network forward calls ``method.sample(1, sampler, nfe)`` makes: the NFE of one sample."""
    return sampling_audit(method, sampler, nfe, generator)["calls"]


def check_counted_work(method: Method, sampler: str, audit: dict) -> None:
    """Fail when most of one sample's FLOPs ran outside the networks whose calls are counted."""
    if audit["values"] is None:
        return  # not a tensor: the cell fails on its samples' type instead
    outside = audit["flops"] - audit["network_flops"]
    limit = UNCOUNTED_SHARE * audit["network_flops"] + UNCOUNTED_PER_VALUE * audit["values"]
    if outside > limit:
        raise UncountedWork(
            f"sampler {sampler!r} of {method.name!r} did {outside:.3g} FLOPs per sample outside the networks "
            f"modules() returns ({audit['network_flops']:.3g} inside, {audit['calls']} counted calls); "
            "call each network as module(x), not module.forward(x) or another of its methods, list every network "
            "in modules(), and do one-off arithmetic (a factorisation) once, not in sample()")


def check_nfe(method: Method, sampler: str, nfe: int, counted: int) -> None:
    """Fail when a sampler's networks ran more often than it declares."""
    info = method.sampler(sampler)
    if info.adaptive:
        return
    declared = nfe * info.calls_per_step
    if counted > declared + 1e-9:
        raise NFEMismatch(
            f"sampler {sampler!r} of {method.name!r} declared NFE {nfe} ({info.calls_per_step:g} network call(s) per step) "
            f"but its networks ran {counted} forward calls for one sample; declare calls_per_step in its SamplerInfo"
        )


def check_batch_calls(method: Method, sampler: str, one_sample: int, batch: int) -> None:
    """Fail when drawing the evaluation samples called the counted networks clearly less often than
    drawing one sample did: the NFE on the board comes from the one-sample call, so a sampler
    must not run its networks around the counter only when it is given more than one."""
    # An adaptive solver may take fewer steps for a batch than for one sample (score-sde's
    # ode-adaptive: 86 for one, 80 for 33), and a sampler may cache a call whose input every
    # sample shares: small shortfalls are allowed.
    least = one_sample / 2 if method.sampler(sampler).adaptive else one_sample - (one_sample // 10 + 1)
    if batch < least:
        raise UncountedWork(
            f"sampler {sampler!r} of {method.name!r} made {one_sample} counted network calls for one sample "
            f"but {batch} for the evaluation batch; call each network as module(x) whatever the batch size")


def _timed_sampling(method: Method, sampler: str, nfe: int, n: int, g: torch.Generator, aux_seed: int) -> dict:
    device = method.device
    aux = torch.Generator(device=device).manual_seed(aux_seed)
    with torch.no_grad():
        synchronize(device)
        audit = sampling_audit(method, sampler, nfe, aux)  # also the warm-up, not timed
        nfe_counted = audit["calls"]
        check_nfe(method, sampler, nfe, nfe_counted)
        check_counted_work(method, sampler, audit)
        synchronize(device)
        t0 = time.perf_counter()
        draw_samples(method, 1, sampler, nfe, aux)
        synchronize(device)
        latency = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        calls = _ForwardCounter(method)  # hooks only: no counting mode around the timed draw
        try:
            t0 = time.perf_counter()
            samples = draw_samples(method, n, sampler, nfe, g)
            synchronize(device)
            seconds = time.perf_counter() - t0
        finally:
            calls.close()
        check_batch_calls(method, sampler, nfe_counted, calls.calls)
    cost = {
        "sampler": sampler,
        "sampler_params": dict(method.sampler(sampler).params),
        "nfe": nfe,
        "nfe_counted": nfe_counted,
        "flops_per_sample": audit["flops"],  # the warm-up sample's, counted as training FLOPs are
        "network_flops_per_sample": audit["network_flops"],
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
    from gmbench.metrics.base import SKIPPED_OUTPUTS
    from gmbench.metrics.likelihood import STDERR

    base = {"metric": metric.name, "version": metric.version, "sampler": sampler, "nfe": nfe}
    if metric.kind == "samples":
        base["split"] = ctx.split
    t0 = time.perf_counter()
    try:
        values = metric.compute(ctx, samples=samples, method=method)
    except MetricSkipped as exc:
        return [{**base, "name": metric.name, "value": None, "skipped": str(exc)}]
    except Exception as exc:  # noqa: BLE001
        return [{**base, "name": metric.name, "value": None, "error": one_line(exc), "seconds": time.perf_counter() - t0}]
    seconds = time.perf_counter() - t0
    values = dict(values)
    stderr = values.pop(STDERR, None)
    skipped = values.pop(SKIPPED_OUTPUTS, None) or {}
    out = []
    for i, (name, value) in enumerate(values.items()):
        value = None if value is None else float(value)
        entry = {**base, "name": name, "value": value, "seconds": seconds}
        if value is None and name in skipped:
            entry["skipped"] = str(skipped[name])
        if value is not None and not math.isfinite(value):  # JSON records hold no NaN/inf
            entry.update(value=None, error=f"{metric.name} returned {value} for {name}")
        if metric.likelihood_values and method is not None:
            entry["label"] = method.likelihood
            if i == 0 and stderr is not None and math.isfinite(stderr):
                entry["stderr"] = stderr  # the unified likelihood (first output) carries its standard error
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
