"""Score samples made elsewhere (``gmbench eval``) with the same metrics and protocol.

The record is labelled ``"source": "external"``, its ``method`` is the label
the user gives, and its fingerprint is computed from the same fields as a
trained run's on the same dataset and budget, so it can stand on the same
leaderboard. The budget matters because it fixes how many samples are scored
(sample-based metrics such as FID or sliced Wasserstein depend on that count):
the first ``eval_samples`` samples of the file are used, and a file with fewer
is refused. Model metrics (test likelihood) need the model and are left out.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gmbench.data import make_dataset
from gmbench.evaluate import _run_metric, eval_context, protocol_fields
from gmbench.loading import LoadError, read_samples, samples_to_tensor
from gmbench.plugins import Registries
from gmbench.records import SCHEMA_VERSION, RunSpec, fingerprint, provenance, sha256_file, write_record

EXTERNAL_SAMPLER = "external"


def score_external(
    reg: Registries,
    dataset_token: str,
    samples_path: str | Path,
    label: str,
    budget_name: str,
    out_dir: str | Path,
    seed: int = 0,
    device: str = "cpu",
    cache_dir: str | None = None,
) -> dict:
    """Score the samples in ``samples_path``; write and return an ``external`` record.

    Raises :class:`~gmbench.loading.LoadError` (one line) for samples of the
    wrong shape, dtype or range, or too few of them.
    """
    budget = reg.budgets.get(budget_name)
    dataset = make_dataset(reg.datasets, dataset_token)
    samples = samples_to_tensor(read_samples(samples_path), dataset)
    n = budget.eval_samples[dataset.modality]
    if len(samples) < n:
        raise LoadError(f"budget {budget.name!r} scores {n} samples on {dataset.modality} data; the file holds {len(samples)}")
    metrics = [m for m in (reg.metrics.get(name) for name in reg.metrics.names()) if m.applies_to(dataset)]
    path = Path(samples_path).resolve()
    digest = sha256_file(path) if path.is_file() else _folder_digest(path)
    spec = RunSpec(label, dataset_token, budget.name, seed, device, load=f"{path}")
    ctx = eval_context(dataset, budget, seed, device, cache_dir, extractors=reg.feature_extractors)
    fields = protocol_fields(dataset, budget, metrics, ctx)
    record = {
        "schema": SCHEMA_VERSION,
        "method": label,
        "dataset": dataset_token,
        "budget": budget.name,
        "seed": seed,
        "hparams": {},
        "spec_hash": spec.spec_hash,
        "precision": "fp32",
        "source": "external",
        "samples": {"path": str(path), "sha256": digest, "n_in_file": len(samples), "n_scored": n},
        "status": "failed",
        "error": None,
        "started_at": _now(),
        "likelihood": "none",
        "modality": dataset.modality,
        "provenance": provenance(device),
        "fingerprint_fields": fields,
        "fingerprint": fingerprint(fields),
        "train": None,
        "cost": {"params": None, "train_flops": None, "train_seconds": None, "sampling": []},
    }
    entries = []
    for metric in (m for m in metrics if m.kind == "samples"):
        entries += _run_metric(metric, ctx, sampler=EXTERNAL_SAMPLER, nfe=None, samples=samples[:n])
    record["metrics"] = entries
    ok = [e for e in entries if e.get("error") is None and e.get("value") is not None]
    record["status"] = "ok" if ok else "failed"
    if not ok:
        record["error"] = next((e["error"] for e in entries if e.get("error")), "no metric applies to these samples")
    record["finished_at"] = _now()
    write_record(out_dir, spec, record)
    return record


def _folder_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
