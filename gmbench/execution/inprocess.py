"""Runs one after another in this process (the default, and what tests use).

No isolation beyond ``run_one``'s: an exception, NaN or a cap checked between
steps becomes a failed record. A hang *inside* one step (or one sampler call)
cannot be stopped from Python safely, so a ``SIGALRM`` watchdog raises in the
main thread once the run has used its training cap + evaluation cap + grace
(or ``RunOptions.hang_timeout_s``).
That interrupts Python code and interruptible waits (sleep, I/O); a C routine
that never returns to the interpreter (a deadlocked kernel) is only
interrupted when it returns — use ``--jobs N`` (worker processes, killed
from outside) where that matters. Memory caps need worker processes too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from gmbench.execution.base import ExecutionError, Executor, Report, write_failed
from gmbench.execution.limits import make_deterministic
from gmbench.execution.worker import warm_up
from gmbench.records import RunSpec


class RunHung(BaseException):
    """A run past its hard deadline (training cap + evaluation cap + grace).

    A ``BaseException``, like ``KeyboardInterrupt``: the evaluation's
    ``except Exception`` around each sampler and metric must not swallow it
    and carry on; ``run_one`` turns it into the run's failed record.
    """


@contextlib.contextmanager
def watchdog(seconds: float, message: str):
    """Raise :class:`RunHung` in the main thread after ``seconds`` (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise RunHung(message)

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, 1e9))  # larger values overflow time_t; 1e9 s is "never"
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_FROZEN = False


def _freeze_imports() -> None:
    """Exclude what is loaded by now (torch, sympy, the host: ~10^6 objects) from garbage collection.

    ``run_one`` collects garbage after every run; scanning those objects cost
    ~0.5 s per run. Only cyclic garbage among objects alive now is affected
    (never collected), and module-level objects are not garbage.
    """
    global _FROZEN
    if not _FROZEN:
        import gc

        gc.freeze()
        _FROZEN = True


class InProcessExecutor(Executor):
    name = "local"

    def run(self, specs: list[RunSpec], reg, out_dir: str | Path, report: Report | None = None) -> list[dict]:
        from gmbench.runner import run_one

        if self.options.memory_cap_mb:
            raise ExecutionError("--memory-cap-mb needs worker processes: add --jobs N or use --executor ray")
        self.options.apply_threads()  # before any torch work: the inter-op pool is sized once per process
        if self.options.deterministic:
            make_deterministic()
        warm_up()  # the first run of a process would otherwise spend ~3 s of its clock cap on imports
        _freeze_imports()
        records = []
        for spec in specs:
            limit = self.options.hard_timeout_s(reg.budgets.get(spec.budget))
            message = f"no result after {limit:g}s ({self.options.hang_rule()}): run hung"
            try:
                with watchdog(limit, message):
                    rec = run_one(spec, reg, out_dir, self.options.cache_dir, self.options.checkpoint_dir)
            except RunHung as exc:  # fired outside run_one's own handler (e.g. while writing)
                rec = write_failed(reg, out_dir, spec, f"RunHung: {exc}")
            records.append(rec)
            if report:
                report(spec, rec)
        return records
