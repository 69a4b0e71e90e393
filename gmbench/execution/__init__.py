"""Where runs execute: in this process, in worker processes, or as Ray tasks.

Every executor takes the same specs and writes the same records, atomically,
from wherever the run executed; ``gmbench.runner.run_all`` picks the specs
(``--resume`` drops those with an ok record) and hands them to one::

    from gmbench.execution import RunOptions, make_executor
    with make_executor("local", jobs=2, options=RunOptions(memory_cap_mb=2000)) as ex:
        run_all(matrix, reg, "results", executor=ex)

* ``local`` without ``jobs``: in-process, sequential (:mod:`.inprocess`).
* ``local`` with ``jobs=N``: N worker processes (:mod:`.processes`), each run
  isolated in its own process (:mod:`.worker`): hung runs are killed, a memory
  cap applies, a crash is a failed record.
* ``ray``: one Ray task per run with its CPU/GPU resources (:mod:`.ray_executor`).

See docs/scaling.md and docs/reliability.md.
"""

from __future__ import annotations

from gmbench.execution.base import ExecutionError, Executor, RunOptions

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "ExecutionError", "Executor", "RunOptions", "make_executor"]


def make_executor(
    name: str = "local",
    jobs: int | None = None,
    options: RunOptions | None = None,
    ray_address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
) -> Executor:
    if name == "local":
        if jobs is None:
            from gmbench.execution.inprocess import InProcessExecutor

            return InProcessExecutor(options)
        from gmbench.execution.processes import ProcessExecutor

        return ProcessExecutor(jobs, options)
    if name == "ray":
        if jobs is not None:
            raise ExecutionError("--jobs is for --executor local; Ray runs as many runs at once as the cluster's resources allow")
        from gmbench.execution.ray_executor import RayExecutor

        return RayExecutor(options, address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
    raise ExecutionError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
