"""The executor interface and what every worker needs to know besides the spec."""

from __future__ import annotations

import datetime as dt
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar

from gmbench.records import RunSpec, write_record

#: settings of the driver's environment that every worker, local or remote, must share
DRIVER_ENV = (
    "HF_DATASETS_OFFLINE", "HF_HOME", "HF_DATASETS_CACHE", "GMBENCH_CACHE_DIR",
    "GMBENCH_DISABLE_EXTERNAL_PLUGINS", "CUBLAS_WORKSPACE_CONFIG", "GMBENCH_CAP_SCALE",
)

#: called once per finished run, with the record written for it
Report = Callable[[RunSpec, dict], None]


class ExecutionError(RuntimeError):
    """An executor that cannot start (Ray missing or unreachable, bad option); one line."""


@dataclass(frozen=True)
class RunOptions:
    """How runs execute (not what they measure: that is the :class:`RunSpec`).

    Attributes:
        cache_dir: metric caches (reference statistics...).
        checkpoint_dir: save each trained run's weights here as safetensors.
        memory_cap_mb: address space each run may use beyond its worker's
            start-up (worker processes only; see :mod:`gmbench.execution.limits`).
        grace_s: a worker still running ``wall_clock_s + eval_timeout_s +
            grace_s`` after it started is hung: it is killed and the parent
            writes the failed record.
        threads: torch threads per run in a worker (default: the run's CPUs).
        deterministic: ask torch for deterministic kernels (docs/scaling.md).
        extra_plugins: picklable plugin objects every worker registers besides
            the installed ones (tests, programmatic use); on a cluster their
            modules must be importable on every node.
        load_entrypoints: workers load installed plugins (the ``gmbench`` entry points).
        env: environment variables set in every worker; executors add the
            driver's values of ``DRIVER_ENV`` (Ray workers on other nodes do not
            inherit the driver's environment).
    """

    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    memory_cap_mb: int | None = None
    grace_s: float = 60.0
    threads: int | None = None
    deterministic: bool = False
    extra_plugins: tuple = ()
    load_entrypoints: bool = True
    env: dict = field(default_factory=dict)

    def hard_timeout_s(self, budget) -> float:
        from gmbench.budget import cap_scale

        return budget.train_cap_s + budget.eval_cap_s + float(self.grace_s) * cap_scale()


class Executor(ABC):
    """Runs specs and writes one record per spec (atomically, from the worker)."""

    name: ClassVar[str]

    def __init__(self, options: RunOptions | None = None):
        options = options or RunOptions()
        driver = {k: os.environ[k] for k in DRIVER_ENV if k in os.environ}
        self.options = replace(options, env={**driver, **options.env})

    @abstractmethod
    def run(self, specs: list[RunSpec], reg, out_dir: str | Path, report: Report | None = None) -> list[dict]:
        """Run every spec; return their records in the order they finished."""

    def close(self) -> None:
        """Release what the executor started (worker pools, a local Ray)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def write_failed(reg, out_dir: str | Path, spec: RunSpec, error: str, **extra) -> dict:
    """Write the failed record of a run whose worker could not write one (hung, killed, lost)."""
    from gmbench.runner import _notify, new_record

    record = new_record(spec)
    record.update(error=error, finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **extra)
    write_record(out_dir, spec, record)
    if reg is not None:
        _notify(reg, "gmbench_run_finish", spec=spec, record=record)
    return record


def remove_stale_temp_files(out_dir: str | Path, older_than_s: float = 3600.0) -> int:
    """Delete half-written records (``.tmp-*.part``) left by killed writers; return how many.

    Only files untouched for ``older_than_s``: a writer still busy in another
    process finishes within seconds.
    """
    import time

    now, removed = time.time(), 0
    for f in Path(out_dir).glob(".tmp-*.part"):
        try:
            if now - f.stat().st_mtime > older_than_s:
                f.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
