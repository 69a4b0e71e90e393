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
#: ok; failed (with ``error``); incomplete (training stopped at the wall-clock cap, then
#: evaluated; ``budget_spent`` says how much of the budget it used; ``--resume`` continues it)
STATUSES = ("ok", "failed", "incomplete")
ATTEMPTS_DIR = "attempts"


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
    #: "distribution version" of a third-party method's plugin ("" for gmbench's own): two
    #: plugins that use one method name, or two versions of one plugin, never share a record
    plugin: str = ""

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
        if not d["plugin"]:
            d.pop("plugin")
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
    """Write ``record`` atomically; return where it went.

    Nothing is ever lost: a record that is not ``ok`` never replaces an ``ok``
    record of the same spec (it goes to ``attempts/`` instead), and a record
    that replaces another moves the old one to ``attempts/`` first. If the
    folder cannot be written after all (a full disk, permissions changed
    mid-sweep; the CLI checks it is writable before any work), the record is
    kept in a fallback folder (:func:`fallback_dir`) and stderr says where.
    """
    # serialised before anything moves: a record that cannot be written displaces nothing
    text = json.dumps(record, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    try:
        return _write_record_text(Path(out_dir), spec, record, text)
    except OSError as exc:
        kept = _write_json(_mkdir(fallback_dir()) / spec.filename, text)
        sys.stderr.write(f"gmbench: could not write the record of {spec.method} on {spec.dataset} seed {spec.seed} "
                         f"to {out_dir} ({exc.strerror or exc}); it is kept at {kept}\n")
        return kept


def fallback_dir() -> Path:
    """Where records that cannot be written to their folder are kept:
    ``$GMBENCH_CACHE_DIR/unsaved-records`` (default ``~/.cache/gmbench/unsaved-records``)."""
    return Path(os.environ.get("GMBENCH_CACHE_DIR") or Path.home() / ".cache" / "gmbench") / "unsaved-records"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_record_text(out_dir: Path, spec: RunSpec, record: dict, text: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.filename
    if path.exists():
        try:
            previous_ok = load_record(path).get("status") == "ok"
        except RecordError:
            previous_ok = False
        if previous_ok and record.get("status") != "ok":
            return _write_json(_attempt_path(out_dir, spec), text)
        os.replace(path, _attempt_path(out_dir, spec))
    return _write_json(path, text)


def retire_record(out_dir: str | Path, spec: RunSpec) -> Path | None:
    """Move the record of ``spec`` to ``attempts/`` (``--force``); return where it went."""
    path = Path(out_dir) / spec.filename
    if not path.exists():
        return None
    dest = _attempt_path(Path(out_dir), spec)
    os.replace(path, dest)
    return dest


def _attempt_path(out_dir: Path, spec: RunSpec) -> Path:
    """A fresh name under ``out_dir/attempts/`` for one attempt of ``spec``."""
    import time

    folder = out_dir / ATTEMPTS_DIR
    folder.mkdir(exist_ok=True)
    stem, n = Path(spec.filename).stem, time.time_ns()
    while (folder / f"{stem}__{n}.json").exists():
        n += 1
    return folder / f"{stem}__{n}.json"


def _write_json(path: Path, text: str) -> Path:
    out_dir = path.parent
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
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]  # attempts/ holds superseded records: not read
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
    """True when an ``ok`` record for ``spec`` exists: failed and incomplete runs are redone."""
    return record_status(out_dir, spec) == "ok"


def record_status(out_dir: str | Path, spec: RunSpec) -> str | None:
    """Status of the record of ``spec`` in ``out_dir`` (None: none, or unreadable)."""
    path = Path(out_dir) / spec.filename
    if not path.exists():
        return None
    try:
        return load_record(path).get("status")
    except RecordError:
        return None


class SpecLock:
    """An exclusive lock on one spec in one results folder (``.locks/<hash>.lock``, flock).

    Two ``gmbench run`` processes writing into one ``--out`` never run (or write)
    the same spec at once: the second skips it. The kernel releases the lock when
    its process dies, so a killed run never leaves a stale lock. (flock needs a
    local filesystem or one that supports it; on NFS use one writer per folder.)
    """

    def __init__(self, out_dir: str | Path, spec: RunSpec):
        self.path = Path(out_dir) / ".locks" / f"{spec.spec_hash}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


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
        "threads": _threads(),
    }


def _threads() -> dict:
    """The torch threads the host's policy set for this run (gmbench.execution.threads)."""
    try:
        from gmbench.execution.threads import current_policy
    except ImportError:  # pragma: no cover - the policy module ships with gmbench
        return {}
    return current_policy()
