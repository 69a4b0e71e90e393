"""Expand the run matrix and execute runs in isolation.

``run_one`` never raises for a broken plugin: an exception, a NaN loss, a
wall-clock overrun, a sampler returning garbage all become a record with
``status: failed`` and a one-line ``error`` (the traceback is kept too), and
the suite goes on. Records are written atomically (see :mod:`gmbench.records`).
"""

from __future__ import annotations

import datetime as dt
import gc
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from gmbench.data import make_dataset
from gmbench.evaluate import evaluate, one_line
from gmbench.method import validate_method_class
from gmbench.plugins import Registries
from gmbench.records import SCHEMA_VERSION, RunSpec, finished, fingerprint, provenance, write_record
from gmbench.registry import RegistryError
from gmbench.training import train


@dataclass
class Matrix:
    """The runs a command asked for, and the method/dataset pairs it skipped."""

    specs: list[RunSpec]
    skipped: list[tuple[str, str, str]]  # (method, dataset, why)


def expand(
    reg: Registries,
    plugins: str | list[str] = "all",
    datasets: str | list[str] | None = None,
    budget: str = "small",
    seeds: Iterable[int] = (0,),
    device: str = "cpu",
) -> Matrix:
    """methods x datasets (by modality) x budget x seeds.

    With ``datasets=None`` every *embedded* dataset a method supports is used;
    named datasets are used for every selected method whose modalities fit.
    Unknown names raise :class:`RegistryError` with a suggestion.
    """
    methods = reg.methods.select(plugins)
    reg.budgets.get(budget)
    if datasets is None or datasets == "all":
        tokens = [d for d in reg.datasets.names() if reg.datasets.get(d).embedded]
    else:
        tokens = [t.strip() for t in datasets.split(",")] if isinstance(datasets, str) else list(datasets)
        for t in tokens:
            reg.datasets.get(t.partition(":")[0])
    specs, skipped = [], []
    for m in methods:
        cls = reg.methods.get(m)
        for t in tokens:
            modality = reg.datasets.get(t.partition(":")[0]).modality
            if modality not in cls.modalities:
                skipped.append((m, t, f"{m} supports {', '.join(cls.modalities)}, not {modality}"))
                continue
            specs += [RunSpec(m, t, budget, int(s), device) for s in seeds]
    return Matrix(specs, skipped)


def _peak_memory_mb(device: torch.device) -> dict:
    out = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_one(spec: RunSpec, reg: Registries, out_dir: str | Path, cache_dir: str | None = None) -> dict:
    """Train, sample and score one run; write and return its record."""
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record: dict = {
        "schema": SCHEMA_VERSION,
        "method": spec.method,
        "dataset": spec.dataset,
        "budget": spec.budget,
        "seed": spec.seed,
        "hparams": dict(spec.hparams),
        "spec_hash": spec.spec_hash,
        "status": "failed",
        "error": None,
        "started_at": started,
        "train": None,
        "metrics": [],
        "cost": {},
    }
    _notify(reg, "gmbench_run_start", spec=spec)
    try:
        _execute(spec, reg, record, cache_dir)
        ok_metrics = [m for m in record["metrics"] if m.get("error") is None and m.get("value") is not None]
        if not ok_metrics:
            errors = [m["error"] for m in record["metrics"] if m.get("error")]
            raise RuntimeError("no metric could be computed" + (f": {errors[0]}" if errors else ""))
        record["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - isolation: anything a plugin does is a failed record
        record["status"] = "failed"
        record["error"] = one_line(exc)
        record["traceback"] = traceback.format_exc(limit=20)
    finally:
        gc.collect()
    record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_record(out_dir, spec, record)
    _notify(reg, "gmbench_run_finish", spec=spec, record=record)
    return record


def _execute(spec: RunSpec, reg: Registries, record: dict, cache_dir: str | None) -> None:
    budget = reg.budgets.get(spec.budget)
    cls = reg.methods.get(spec.method)
    validate_method_class(cls)
    dataset = make_dataset(reg.datasets, spec.dataset)
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RegistryError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    data_spec = dataset.spec()
    modality = data_spec.modality
    metrics = [reg.metrics.get(n) for n in reg.metrics.names()]
    metrics = [m for m in metrics if m.applies_to(dataset)]

    record["likelihood"] = cls.likelihood
    record["modality"] = modality
    record["provenance"] = provenance(str(device), _dist_of(reg, spec.method))
    fields = {
        **dataset.fingerprint_fields(),
        **budget.fingerprint_fields(modality),
        "metrics": {m.name: m.version for m in metrics},
        "schema": SCHEMA_VERSION,
    }
    record["fingerprint_fields"] = fields
    record["fingerprint"] = fingerprint(fields)

    torch.manual_seed(spec.seed)  # network initialisation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    method = cls(data_spec, model_size=budget.model_size, **dict(spec.hparams)).to(device)
    generator = torch.Generator().manual_seed(spec.seed)  # data order and stage preparation

    t0 = time.perf_counter()
    stages = train(method, dataset.split("train").x, budget, modality, generator)
    train_seconds = time.perf_counter() - t0
    record["train"] = {
        "stages": [s.to_dict() for s in stages],
        "steps": sum(s.steps for s in stages),
        "flops": sum(s.flops for s in stages),
        "flops_allowed": budget.flops_for(modality),
        "seconds": train_seconds,
    }
    entries, sampling = evaluate(method, dataset, budget, metrics, spec.seed, cache_dir=cache_dir)
    record["metrics"] = entries
    record["cost"] = {
        "params": method.num_parameters(),
        "train_flops": record["train"]["flops"],
        "train_seconds": train_seconds,
        "sampling": sampling,
        "peak_memory": _peak_memory_mb(device),
    }


def _dist_of(reg: Registries, method: str) -> tuple[str, str]:
    origin = reg.methods.origin(method)
    name, _, version = origin.partition(" ")
    return name, version


def _notify(reg: Registries, hook: str, **kwargs) -> None:
    import warnings

    try:
        getattr(reg.pm.hook, hook)(**kwargs)
    except Exception as exc:  # noqa: BLE001 - an observer must not fail a run
        warnings.warn(f"gmbench: observer hook {hook} raised {one_line(exc)}", stacklevel=2)


def run_all(
    matrix: Matrix,
    reg: Registries,
    out_dir: str | Path,
    resume: bool = False,
    on_record: Callable[[RunSpec, dict | None, int, int], None] | None = None,
) -> list[dict]:
    """Run every spec in order (``--resume`` skips those with an ok record)."""
    records = []
    total = len(matrix.specs)
    for i, spec in enumerate(matrix.specs):
        if resume and finished(out_dir, spec):
            if on_record:
                on_record(spec, None, i + 1, total)
            continue
        rec = run_one(spec, reg, out_dir)
        records.append(rec)
        if on_record:
            on_record(spec, rec, i + 1, total)
    return records
