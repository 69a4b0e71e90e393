"""Score samples made elsewhere (``gmbench eval``) with the same metrics and protocol.

The record is labelled ``"source": "external"``, its ``method`` is the label
the user gives, and its fingerprint is computed from the same fields as a
trained run's on the same dataset and budget, so it can stand on the same
leaderboard. The budget matters because it fixes how many samples are scored
(sample-based metrics such as FID or sliced Wasserstein depend on that count):
a file with more rows is scored on a seeded random subset of ``eval_samples``
rows, one with fewer is refused. The subset, and the order the metrics see the
rows in, come from the rows' contents and the seed, never from the file's row
order: a sampler that writes its samples class by class would otherwise be
scored on its first classes only (and KID subsets, Inception-Score splits and
the pixel sliced-Wasserstein cut all take rows by position). Model metrics
(test likelihood) need the model and are left out.

``eval_options`` (e.g. ``{"fid_reference_split": "test"}``) reach the metrics
as a trained run's do, through :class:`~gmbench.records.RunSpec.eval_options`,
and so change the spec hash and, through the metrics' fingerprint fields, the
fingerprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import torch

from gmbench.data import make_dataset
from gmbench.evaluate import _run_metric, eval_context, protocol_fields
from gmbench.loading import LoadError, read_samples, sample_files, samples_to_tensor
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
    value_range: tuple[float, float] | None = None,
    eval_options: dict | None = None,
) -> dict:
    """Score the samples in ``samples_path``; write and return an ``external`` record.

    ``value_range`` states the range image samples were made in (they are
    rescaled to the dataset's); without it, samples covering only part of the
    data range are scored as given and the record's ``samples.warnings`` says
    so. Raises :class:`~gmbench.loading.LoadError` (one line) for samples of
    the wrong shape, dtype or range, or too few of them.
    """
    budget = reg.budgets.get(budget_name)
    dataset = make_dataset(reg.datasets, dataset_token)
    warnings: list[str] = []
    samples = samples_to_tensor(read_samples(samples_path), dataset, value_range=value_range, warn=warnings.append)
    n = budget.eval_samples[dataset.modality]
    if len(samples) < n:
        raise LoadError(f"budget {budget.name!r} scores {n} samples on {dataset.modality} data; the file holds {len(samples)}")
    scored, rows = scored_rows(samples, n, seed)
    metrics = [m for m in (reg.metrics.get(name) for name in reg.metrics.names()) if m.applies_to(dataset)]
    path = Path(samples_path).resolve()
    digest = sha256_file(path) if path.is_file() else _folder_digest(path)
    options = tuple(sorted((eval_options or {}).items()))
    spec = RunSpec(label, dataset_token, budget.name, seed, device, load=f"{path}", eval_options=options)
    ctx = eval_context(dataset, budget, seed, device, cache_dir, extractors=reg.feature_extractors, options=dict(options))
    fields = protocol_fields(dataset, budget, metrics, ctx)
    record = given_samples_record(spec, dataset, fields, "external", device, samples={
        "path": str(path), "sha256": digest, "n_in_file": len(samples), "n_scored": n, "rows": rows,
        "value_range": list(value_range) if value_range else None, "warnings": warnings},
        eval_options=dict(options))
    entries = []
    for metric in (m for m in metrics if m.kind == "samples"):
        entries += _run_metric(metric, ctx, sampler=EXTERNAL_SAMPLER, nfe=None, samples=scored)
    record["metrics"] = entries
    ok = [e for e in entries if e.get("error") is None and e.get("value") is not None]
    record["status"] = "ok" if ok else "failed"
    if not ok:
        record["error"] = next((e["error"] for e in entries if e.get("error")), "no metric applies to these samples")
    record["finished_at"] = _now()
    write_record(out_dir, spec, record)
    return record


def scored_rows(samples: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, str]:
    """The ``n`` rows to score and a sentence for the record saying which.

    Rows are first put in a canonical order (by a hash of each row's bytes), so
    the same set of samples gives the same subset, in the same order, whatever
    the file's row order; a permutation seeded by ``seed`` then picks ``n``.
    """
    digests = [hashlib.sha256(row.numpy().tobytes()).digest() for row in samples.contiguous()]
    canonical = sorted(range(len(samples)), key=digests.__getitem__)
    pick = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:n]
    rows = samples[torch.as_tensor(canonical)[pick]]
    subset = "all rows" if n == len(samples) else f"a random subset of {n} of the {len(samples)} rows"
    return rows, f"{subset}, in an order drawn with seed {seed} from the rows' contents, never their row order in the file"


def _folder_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sample_files(path):  # the files read, not the hidden ones beside them
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def given_samples_record(spec: RunSpec, dataset, fields: dict, source: str, device: str, **extra) -> dict:
    """The fields of a record that scores samples given from outside a method: external
    files (``source="external"``) and noise floors (``"reference"``); ``status`` is
    ``failed`` until the caller has scored them."""
    return {
        "schema": SCHEMA_VERSION,
        "method": spec.method,
        "dataset": spec.dataset,
        "budget": spec.budget,
        "seed": spec.seed,
        "hparams": {},
        "spec_hash": spec.spec_hash,
        "precision": "fp32",
        "source": source,
        **extra,
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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
