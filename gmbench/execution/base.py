"""The executor interface and what every worker needs to know besides the spec."""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from gmbench.records import RunSpec, write_record

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
    """

    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    memory_cap_mb: int | None = None
    grace_s: float = 60.0
    threads: int | None = None
    deterministic: bool = False
    extra_plugins: tuple = ()
    load_entrypoints: bool = True

    def hard_timeout_s(self, budget) -> float:
        return float(budget.wall_clock_s) + float(budget.eval_timeout_s) + float(self.grace_s)


class Executor(ABC):
    """Runs specs and writes one record per spec (atomically, from the worker)."""

    name: ClassVar[str]

    def __init__(self, options: RunOptions | None = None):
        self.options = options or RunOptions()

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
