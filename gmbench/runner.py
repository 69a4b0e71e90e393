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
from gmbench.evaluate import eval_context, evaluate, metric_fingerprint_fields, one_line, protocol_fields
from gmbench.execution.precision import autocast, autocast_sampling
from gmbench.loading import checkpoint_path, load_weights, save_checkpoint
from gmbench.method import LIKELIHOOD_KINDS, MethodError, validate_method_class
from gmbench.plugins import Registries
from gmbench import checkpointing, eval_journal
from gmbench.eval_journal import EvalJournal, state_sha256
from gmbench.flops import count_cost
from gmbench.checkpointing import CheckpointPolicy
from gmbench.records import (SCHEMA_VERSION, RunSpec, SpecLock, finished, fingerprint, provenance, retire_record,
                             write_record)
from gmbench.registry import RegistryError
from gmbench.curve import curve_evaluator, record_curve
from gmbench.training import _milestone as training_milestone, train


CHECKPOINTS_DIR = ".checkpoints"
#: a run writes a training checkpoint at least this often (and at every stage end)
CHECKPOINT_EVERY_S = 60.0


def _checkpoint_every_steps() -> int | None:
    """``$GMBENCH_CHECKPOINT_EVERY_STEPS``: also checkpoint every N steps (tests of preemption)."""
    import os

    from gmbench.errors import EnvironmentSettingError

    raw = os.environ.get("GMBENCH_CHECKPOINT_EVERY_STEPS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise EnvironmentSettingError(f"$GMBENCH_CHECKPOINT_EVERY_STEPS={raw!r}: give a positive whole number "
                                      "of training steps, or unset it")
    return int(raw)


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

    With ``datasets=None`` the suite's default datasets are used
    (:func:`default_datasets`), with ``"all"`` every *embedded* dataset; named
    datasets are used for every selected method whose modalities fit. Unknown
    names raise :class:`RegistryError` with a suggestion.
    """
    methods = reg.methods.select(plugins)
    reg.budgets.get(budget)
    if datasets is None:
        tokens = default_datasets(reg)
    elif datasets == "all":
        tokens = list(_embedded(reg))
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
            specs += [RunSpec(m, t, budget, int(s), device, plugin=plugin_of(reg, m)) for s in seeds]
    return Matrix(specs, skipped)


def default_datasets(reg: Registries) -> list[str]:
    """The datasets of ``gmbench run`` without ``--datasets``: per modality, the embedded
    datasets marked ``suite_default`` (built in: 8gaussians, digits, synthlang, one per
    modality, so that the suite answers every modality once in minutes rather than
    repeating each toy method on five 2-D densities); a modality none of whose datasets is
    marked (a plugin's new modality) takes every embedded dataset of it."""
    embedded = _embedded(reg)
    marked = {cls.modality for cls in embedded.values() if cls.suite_default}
    return [d for d, cls in embedded.items() if cls.suite_default or cls.modality not in marked]


def _embedded(reg: Registries) -> dict:
    """Every embedded dataset's class, by name, in registry order."""
    return {d: cls for d in reg.datasets.names() if (cls := reg.datasets.get(d)).embedded}


def _peak_memory_mb(device: torch.device) -> dict:
    out = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def new_record(spec: RunSpec) -> dict:
    """The fields every record has, before the run (status ``failed`` until it succeeds)."""
    return {
        "schema": SCHEMA_VERSION,
        "method": spec.method,
        "dataset": spec.dataset,
        "budget": spec.budget,
        "seed": spec.seed,
        "hparams": dict(spec.hparams),
        "spec_hash": spec.spec_hash,
        "precision": spec.precision,
        "source": "loaded" if spec.load else "trained",
        "status": "failed",
        "error": None,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "train": None,
        "metrics": [],
        "cost": {},
    }


def failure_message(exc: BaseException) -> str:
    """One line for a failed run (allocation failures name the memory cap)."""
    from gmbench.execution.limits import memory_error_message

    return memory_error_message(exc) or one_line(exc)


def checkpoint_folder(out_dir: str | Path, spec: RunSpec) -> Path:
    """Where a run's training checkpoints live while it is unfinished (``<out>/.checkpoints/<record name>/``)."""
    return Path(out_dir) / CHECKPOINTS_DIR / Path(spec.filename).stem


def run_one(
    spec: RunSpec,
    reg: Registries,
    out_dir: str | Path,
    cache_dir: str | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict:
    """Train (or load), sample and score one run; write and return its record.

    Training continues from the run's checkpoint in ``<out>/.checkpoints/`` when
    there is one (``run_all`` removes them first unless resuming); the checkpoint
    is removed once the record is written, except for an ``incomplete`` run,
    which ``--resume`` continues. A spec locked by another process is skipped:
    the returned dict has ``status: "skipped"`` and nothing is written. With
    ``checkpoint_dir`` the trained weights are saved there as safetensors
    (see :mod:`gmbench.loading`), so ``gmbench run --load`` can evaluate them again.
    """
    record = new_record(spec)
    lock = SpecLock(out_dir, spec)
    if not lock.acquire():
        record.update(status="skipped", error=f"another gmbench process is running this spec in {out_dir}")
        return record
    if finished(out_dir, spec):  # done by another process since this one planned it
        lock.release()
        record.update(status="skipped", error=f"another gmbench process finished this spec in {out_dir}")
        return record
    try:
        _notify(reg, "gmbench_run_start", spec=spec)
        try:
            _execute(spec, reg, record, cache_dir, checkpoint_dir, checkpoint_folder(out_dir, spec))
            _require_sample_metrics(record["metrics"])
            record["status"] = "incomplete" if (record.get("train") or {}).get("stopped") else "ok"
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - isolation: anything a plugin does is a failed record
            record["status"] = "failed"
            record["error"] = failure_message(exc)
            record["traceback"] = traceback.format_exc(limit=20)
        finally:
            gc.collect()
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_record(out_dir, spec, record)
        eval_journal.remove(checkpoint_folder(out_dir, spec))  # its values are in the record now
        if record["status"] != "incomplete":
            checkpointing.remove(checkpoint_folder(out_dir, spec))
    finally:
        lock.release()
    _notify(reg, "gmbench_run_finish", spec=spec, record=record)
    return record


def _require_sample_metrics(entries: list[dict]) -> None:
    """A run none of whose samplers produced scorable samples has failed.

    (A sampler that fails at one NFE but works at others is a result worth
    showing: the run stays ok and the failed entries carry their errors.)
    """
    sampled = [e for e in entries if e.get("sampler") is not None]
    if sampled and all(e.get("error") for e in sampled):
        raise RuntimeError(f"no sampler produced usable samples: {sampled[0]['error']}")
    if not any(e.get("error") is None and e.get("value") is not None for e in entries):
        raise RuntimeError("no metric could be computed")


def _execute(spec: RunSpec, reg: Registries, record: dict, cache_dir: str | None, checkpoint_dir=None,
             training_checkpoints: Path | None = None) -> None:
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

    record["likelihood"] = cls.likelihood  # the instance may refine it per data (below)
    record["modality"] = modality
    record["provenance"] = provenance(str(device), _dist_of(reg, spec.method))
    ctx = eval_context(dataset, budget, spec.seed, device, cache_dir, extractors=reg.feature_extractors,
                       options=dict(spec.eval_options))
    fields = protocol_fields(dataset, budget, metrics, ctx)
    own = [m for m in cls.extra_metrics if modality in m.modalities]
    if own:  # scored after the shared metrics, outside the fingerprint (Method.extra_metrics)
        record["method_metrics"] = metric_fingerprint_fields(own, ctx)
    if spec.precision != "fp32":  # fp32 fingerprints stay those of records written before precision existed
        fields["precision"] = spec.precision
    record["fingerprint_fields"] = fields
    record["fingerprint"] = fingerprint(fields)

    torch.manual_seed(spec.seed)  # network initialisation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_build = time.perf_counter()
    method, build = count_cost(lambda: cls(data_spec, model_size=budget.model_size, **dict(spec.hparams)).to(device))
    build_s = time.perf_counter() - t_build
    _require_light_construction(spec.method, build.total, method.num_parameters(), budget.flops_for(modality))
    if method.likelihood not in LIKELIHOOD_KINDS:
        raise MethodError(f"method {spec.method!r}: likelihood must be one of {LIKELIHOOD_KINDS}, not {method.likelihood!r}")
    record["likelihood"] = method.likelihood  # e.g. exact trace on toy2d, a Hutchinson estimate on images
    record["backbone"] = method.backbone()  # boards show it, and can hold it fixed (--same-backbone)
    if method.class_conditional:  # boards mark it: its samples were drawn given balanced classes
        record["conditioning"] = {"kind": "class", "classes": method.data.num_classes}
    generator = torch.Generator().manual_seed(spec.seed)  # data order and stage preparation

    train_seconds, curve_s = None, [0.0]
    if spec.load:  # evaluate given weights: no training, no training cost claimed
        record["load"] = load_weights(method, spec.load)
    else:
        policy = None
        if training_checkpoints is not None:
            policy = CheckpointPolicy(training_checkpoints, every_s=CHECKPOINT_EVERY_S, resume=True,
                                      every_steps=_checkpoint_every_steps())
            record["resumed"] = checkpointing.load(training_checkpoints) is not None
        on_milestone = None
        if budget.curve_fractions:
            evaluate_point = curve_evaluator(method, dataset, budget, metrics, ctx, spec.seed)

            def on_milestone(fraction: float) -> dict:
                t = time.perf_counter()
                try:
                    return evaluate_point(fraction)
                finally:
                    curve_s[0] += time.perf_counter() - t
        t0 = time.perf_counter()
        with autocast(device, spec.precision):
            train_split = dataset.split("train")
            stages = train(method, train_split.x, budget, modality, generator, checkpoints=policy,
                           milestones=budget.curve_fractions, on_milestone=on_milestone, labels=train_split.y)
        train_seconds = time.perf_counter() - t0 - curve_s[0]  # curve points are evaluation, not training
        flops, allowed = sum(s.flops for s in stages), budget.flops_for(modality)
        record["train"] = {
            "stages": [s.to_dict() for s in stages],
            "steps": sum(s.steps for s in stages),
            "flops": flops,
            "flops_allowed": allowed,
            "budget_spent": flops / allowed,
            "seconds": sum(s.seconds for s in stages),  # across resumed attempts
            "stopped": next((s.stopped for s in stages if s.stopped), ""),
            "wall_clock_cap_s": budget.train_cap_for(modality, device.type),
        }
        if record["train"]["stopped"]:
            record["budget_spent"] = record["train"]["budget_spent"]
        if on_milestone is not None:  # the last point of the curve: the end of training, same cheap protocol
            with autocast(device, spec.precision):
                end = training_milestone(method, on_milestone, 1.0)
            record["curve"] = record_curve(record["train"]["stages"], end, flops)
        if checkpoint_dir is not None:
            record["checkpoint"] = save_checkpoint(method, checkpoint_path(checkpoint_dir, spec), {"spec": spec.key()})
    # evaluation in eval mode (dropout off, batch norm on its running statistics), however the
    # model got here: loaded weights start in training mode, and the curve's last point restores it
    method.train(False)
    autocast_sampling(method, spec.precision)
    journal = None
    if training_checkpoints is not None:  # what a killed attempt with these weights already evaluated
        # ... on this machine and code (provenance: revision, versions, device, threads), so
        # reused values and timings are the ones this attempt would measure
        journal = EvalJournal.open(training_checkpoints, {
            "weights": state_sha256(method), "fingerprint": record["fingerprint"],
            "provenance": record["provenance"], "deterministic": torch.are_deterministic_algorithms_enabled(),
        })
    t0 = time.perf_counter()
    profile = {"build_s": build_s, "build_flops": build.total, "train_s": train_seconds, "curve_s": curve_s[0]}
    weights = parameter_digest(method)
    entries, sampling = evaluate(method, dataset, budget, metrics + own, spec.seed, ctx=ctx, profile=profile,
                                 journal=journal)
    eval_seconds = time.perf_counter() - t0
    if journal is not None and (journal.reused_model or journal.reused_cells):
        record["eval_resumed"] = journal.summary()
        eval_seconds += journal.reused_s  # the measured seconds of the parts taken over
    record["metrics"] = entries
    record["cost"] = {
        "params": method.num_parameters(),
        "train_flops": record["train"]["flops"] if record["train"] else None,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "sampling": sampling,
        "profile": profile,
        "peak_memory": _peak_memory_mb(device),
    }
    # integrity: raised after the record holds every measurement, so the failed record keeps them
    if parameter_digest(method) != weights:
        raise MethodError(f"method {spec.method!r} changed its parameters during evaluation (sampling or likelihood); "
                          "evaluation must not train: train only in training_step")
    _require_no_test_copies(entries)


#: a method's construction may cost at most this many FLOPs per parameter (initialisation draws a
#: few per parameter; one training step costs ~6 per parameter and example) or this share of the
#: training allowance, whichever is larger: work beyond it is training outside the meter
BUILD_FLOPS_PER_PARAM = 100
BUILD_SHARE = 0.01


def _require_light_construction(name: str, flops: float, params: int, allowance: float) -> None:
    limit = max(BUILD_FLOPS_PER_PARAM * params, BUILD_SHARE * allowance)
    if flops > limit:
        raise MethodError(
            f"method {name!r} did {flops:.3g} FLOPs while it was built (more than {limit:.3g}: "
            f"{BUILD_FLOPS_PER_PARAM} per parameter or {BUILD_SHARE:.0%} of the training allowance); "
            "train in training_step, where the budget meters it")


def parameter_digest(method) -> str:
    """SHA-256 of every parameter of the method's networks (buffers may legitimately change)."""
    import hashlib

    h = hashlib.sha256()
    for name, module in sorted(method.modules().items()):
        for pname, p in module.named_parameters():
            h.update(f"{name}.{pname}".encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()


def _require_no_test_copies(entries: list[dict]) -> None:
    """A run whose samples copy the held-out split has read it: fail it (memorisation metric)."""
    from gmbench.metrics.memorisation import TEST_LEAK_FLAG

    for e in entries:
        if e.get("name") == "test_copy_excess" and e.get("value") is not None and e["value"] > TEST_LEAK_FLAG:
            raise MethodError(
                f"samples of {e.get('sampler')}@{e.get('nfe')} copy the held-out {e.get('split', 'test')} split "
                f"({e['value']:.0%} more of them sit on a held-out example than on as many training examples): "
                "a method must never read held-out data")


def plugin_of(reg: Registries, method: str) -> str:
    """``RunSpec.plugin`` of ``method``: its distribution and version, or "" for gmbench's own."""
    origin = reg.methods.origin(method) if method in reg.methods else ""
    return "" if not origin or origin.split(" ")[0] == "gmbench" else origin


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
    executor=None,
    force: bool = False,
) -> list[dict]:
    """Run every spec of ``matrix`` with ``executor`` (default: in-process, in order).

    Specs with an ``ok`` record in ``out_dir`` are skipped (``on_record`` gets
    ``record=None``) unless ``force``: then they run again and the old record
    moves to ``attempts/``. Everything else runs; with ``resume`` an interrupted
    or incomplete run continues from its last training checkpoint, without it
    leftover checkpoints are removed first and the run starts from zero.
    ``on_record(spec, record, i, n)`` is called as runs finish. Executors live
    in :mod:`gmbench.execution`.
    """
    from gmbench.execution.base import remove_stale_temp_files
    from gmbench.execution.inprocess import InProcessExecutor

    executor = executor or InProcessExecutor()
    if Path(out_dir).is_dir():
        remove_stale_temp_files(out_dir)
    total = len(matrix.specs)
    pending, done = [], 0
    for spec in matrix.specs:
        if finished(out_dir, spec) and not force:
            done += 1
            if on_record:
                on_record(spec, None, done, total)
            continue
        lock = SpecLock(out_dir, spec)
        if lock.acquire():  # never touch the files of a run going on in another process
            if force:
                retire_record(out_dir, spec)  # kept in attempts/; a run finds no ok record and goes ahead
            if not resume:
                checkpointing.remove(checkpoint_folder(out_dir, spec))
            lock.release()
        pending.append(spec)

    def report(spec: RunSpec, rec: dict) -> None:
        nonlocal done
        done += 1
        if on_record:
            on_record(spec, rec, done, total)

    return executor.run(pending, reg, out_dir, report)
