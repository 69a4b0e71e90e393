"""``--jobs N``: N runs at a time, each in its own worker process.

A thread pool (``concurrent.futures``) does the queueing; each of its
threads supervises one child process through :func:`run_isolated`. Each child
builds its own plugin manager, uses its share of the CPUs as torch threads
(the CPUs this process may use divided by N, or ``--threads``: see
:mod:`.threads`) and may have a memory cap.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from gmbench.evaluate import one_line
from gmbench.execution.base import ExecutionError, Executor, Report, RunOptions, write_failed
from gmbench.execution.worker import run_isolated
from gmbench.records import RunSpec


class ProcessExecutor(Executor):
    name = "local"

    def __init__(self, jobs: int = 1, options: RunOptions | None = None):
        super().__init__(options)
        if jobs < 1:
            raise ExecutionError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs

    def run(self, specs: list[RunSpec], reg, out_dir: str | Path, report: Report | None = None) -> list[dict]:
        options = replace(self.options, jobs=self.jobs)  # each worker takes 1/jobs of the CPUs (see .threads)
        cancel = threading.Event()
        records = []
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="gmbench-run") as pool:
            futures = {
                pool.submit(run_isolated, spec, options, out_dir, options.hard_timeout_s(reg.budgets.get(spec.budget)), cancel): spec
                for spec in specs
            }
            try:
                for fut in as_completed(futures):
                    try:
                        rec = fut.result()
                    except Exception as exc:  # noqa: BLE001 - the worker could not even start
                        rec = write_failed(reg, out_dir, futures[fut], f"could not start a worker: {one_line(exc)}")
                    records.append(rec)
                    if report:
                        report(futures[fut], rec)
            except BaseException:
                cancel.set()
                for fut in futures:
                    fut.cancel()
                raise
        return records
