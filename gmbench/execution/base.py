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
        hang_timeout_s: when set, the hang deadline itself, in place of the
            caps + grace (and not scaled by ``GMBENCH_CAP_SCALE``): an explicit
            bound for callers whose caps are far from how long a run may take
            (tests, which run with caps x50).
        threads: intra-op torch threads per run (``--threads``); default: the
            run's share of this process's CPUs (:mod:`gmbench.execution.threads`).
        jobs: runs executing at once on this machine (``--jobs``); each gets
            ``1 / jobs`` of the CPUs.
        cpus_per_run: CPUs reserved per run (Ray's ``--cpus-per-run``); the
            run's share instead of ``1 / jobs``.
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
    hang_timeout_s: float | None = None
    threads: int | None = None
    jobs: int = 1
    cpus_per_run: float | None = None
    deterministic: bool = False
    extra_plugins: tuple = ()
    load_entrypoints: bool = True
    env: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.threads is not None and (int(self.threads) != self.threads or self.threads < 1):
            raise ExecutionError(f"--threads must be a positive integer, got {self.threads!r}")
        if self.hang_timeout_s is not None and not self.hang_timeout_s > 0:
            raise ExecutionError(f"hang_timeout_s must be positive, got {self.hang_timeout_s!r}")
        if self.jobs < 1:
            raise ExecutionError(f"--jobs must be at least 1, got {self.jobs}")
        if self.cpus_per_run is not None and not self.cpus_per_run > 0:
            raise ExecutionError(f"--cpus-per-run must be positive, got {self.cpus_per_run!r}")

    def hard_timeout_s(self, budget) -> float:
        """Seconds after its start at which a run still going is hung: killed, recorded as failed."""
        from gmbench.budget import cap_scale

        if self.hang_timeout_s is not None:
            return float(self.hang_timeout_s)
        return budget.train_cap_s + budget.eval_cap_s + float(self.grace_s) * cap_scale()

    def hang_rule(self) -> str:
        """How :meth:`hard_timeout_s` was reached, for the hung run's error."""
        if self.hang_timeout_s is not None:
            return "hang timeout"
        return f"training cap + evaluation cap + {self.grace_s:g}s grace"

    def apply_threads(self) -> dict:
        """Size this process's torch thread pools for one run (:func:`gmbench.execution.threads.apply_policy`)."""
        from gmbench.execution.threads import apply_policy

        try:
            return apply_policy(jobs=self.jobs, override=self.threads, cpus_per_run=self.cpus_per_run)
        except ValueError as exc:  # a bad $GMBENCH_THREADS_POLICY
            raise ExecutionError(str(exc)) from None


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
