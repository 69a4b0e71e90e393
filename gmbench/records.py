"""Run specs and run records: schema, atomic write, load, fingerprint, provenance.

One JSON file per run, named ``<method>__<dataset>__<budget>__s<seed>__<hash>.json``
where the hash covers the whole spec. Files are written to a temporary file
in the same directory, flushed and fsynced, then renamed: a reader (or a
``--resume``) never sees half a record, even if the writer is killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from functools import lru_cache
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")


class RecordError(ValueError):
    """A record file that cannot be read or is not a gmbench record."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run.

    ``eval_options`` are evaluation settings a user chose (``--fid-reference``...):
    they reach the metrics' :class:`~gmbench.metrics.base.EvalContext` options and,
    through the metrics' fingerprint fields, the record's fingerprint.
    ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast in training forward
    passes and sampling). ``load`` is a file evaluated instead of training: a
    safetensors checkpoint (``gmbench run --load``) or a samples file
    (``gmbench eval``). Both enter the spec hash only when set, so the hashes
    of plain fp32 trained runs do not depend on these fields existing.
    """

    method: str
    dataset: str
    budget: str
    seed: int = 0
    device: str = "cpu"
    hparams: tuple = field(default_factory=tuple)  # sorted (key, value) pairs
    precision: str = "fp32"
    load: str | None = None
    eval_options: tuple = field(default_factory=tuple)  # sorted (key, value) pairs, e.g. fid_reference_split

    def key(self) -> dict:
        d = asdict(self)
        d["hparams"] = dict(self.hparams)
        d["eval_options"] = dict(self.eval_options)
        d.pop("device")  # the device does not change what is being measured
        if d["precision"] == "fp32":
            d.pop("precision")
        if d["load"] is None:
            d.pop("load")
        if not d["eval_options"]:
            d.pop("eval_options")
        return d

    @property
    def spec_hash(self) -> str:
        return _hash(self.key())[:12]

    @property
    def filename(self) -> str:
        safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s))  # noqa: E731
        return f"{safe(self.method)}__{safe(self.dataset)}__{safe(self.budget)}__s{self.seed}__{self.spec_hash}.json"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (checkpoints, extractor weights, sample files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(fields: dict) -> str:
    """Hash of everything that makes metric values comparable across records."""
    return _hash(fields)[:16]


def write_record(out_dir: str | Path, spec: RunSpec, record: dict) -> Path:
    """Write ``record`` atomically; return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.filename
    text = json.dumps(record, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    # ".part", not ".json": no glob for records ever matches a half-written file
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json.part", dir=out_dir)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other users of a shared results folder
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def load_record(path: str | Path) -> dict:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"cannot read record {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"record {path} is not valid JSON ({exc.msg} at line {exc.lineno}); delete it and rerun with --resume") from None
    if not isinstance(rec, dict) or "method" not in rec or "status" not in rec:
        raise RecordError(f"{path} is not a gmbench run record (no 'method'/'status' fields)")
    if rec.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise RecordError(f"record {path} has schema {rec['schema']}, newer than this gmbench ({SCHEMA_VERSION}); upgrade gmbench")
    return rec


def load_records(paths, strict: bool = False) -> tuple[list[dict], list[str]]:
    """Load every record under the given files/directories.

    Returns (records, problems): unreadable files are reported in ``problems``
    (one line each) instead of aborting, unless ``strict``.
    """
    records, problems = [], []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise RecordError(f"no such results path: {p}")
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        for f in files:
            if f.name.startswith(".tmp-"):
                continue
            try:
                records.append(load_record(f))
            except RecordError as exc:
                if strict:
                    raise
                problems.append(str(exc))
    return records, problems


def finished(out_dir: str | Path, spec: RunSpec) -> bool:
    """True when a readable record for ``spec`` exists (used by --resume).

    Failed runs count as finished only if ``status == 'ok'``: resume retries them.
    """
    path = Path(out_dir) / spec.filename
    if not path.exists():
        return False
    try:
        return load_record(path).get("status") == "ok"
    except RecordError:
        return False


@lru_cache(maxsize=1)
def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: str, plugin_dist: tuple[str, str] = ("", "")) -> dict:
    import torch

    from gmbench import __version__

    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "gmbench_version": __version__,
        "plugin_distribution": plugin_dist[0],
        "plugin_version": plugin_dist[1],
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": dev,
        "cpu_threads": torch.get_num_threads(),
    }
